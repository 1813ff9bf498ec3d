"""Load curated rows (arrays are memory-mapped ``.npy``): the one place a row becomes an item.

``root`` is the ``curated/`` folder; ``row`` is an index row (a dict from ``Index.query``).
:func:`load_row` gives a row in the run's item shape (:func:`item_shape`: ``(H, W)`` in 2D,
``(depth, H, W)`` in 3D, volumes resampled), optionally with its context labels kept alone or
removed; every stage that trains on or renders from curated rows goes through it.
:func:`load_image` / :func:`load_mask` give the stored arrays: slice rows ``(1, H, W)`` images and
``(H, W)`` masks, volume rows ``(1, Z, H, W)`` and ``(Z, H, W)``. Images are float32 in [-1, 1];
masks int64 (zeros when unannotated). Imports no stage package.

Each array file is checked once per process against the content hash ``curate.json`` records for
it (``image_hash`` / ``mask_hash_stored``): a damaged array is an error naming the file and the fix,
never silently trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mrgen import io


def _root(root: str | Path) -> Path:
    root = Path(root)
    return root.parent if root.is_file() else root


def _is_slice(row: dict) -> bool:
    return row.get("kind", "slice" if int(row.get("slice", -1)) >= 0 else "volume") == "slice"


_checked: set = set()  # (path, size, mtime) of array files whose hash matched curate.json
_hash_cache: dict = {}  # the hashes of the last curate.json read, with its (path, size, mtime)


def _recorded_hashes(curated: Path) -> dict:
    """``{array path relative to curated/: content hash}`` from ``curate.json`` (empty when it records none)."""
    path = curated / "curate.json"
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    key = (str(path), st.st_size, st.st_mtime_ns)
    if _hash_cache.get("key") != key:
        try:
            vols = io.read_json(path).get("volumes", {})
        except (UnicodeDecodeError, ValueError) as exc:
            raise io.corrupt(path, exc, f"delete it and rerun `mrgen curate -w {curated.parent}`") from None
        out = {}
        for rec in vols.values() if isinstance(vols, dict) else ():
            for rel, h in ((rec.get("image"), rec.get("image_hash")), (rec.get("mask"), rec.get("mask_hash_stored"))):
                if rel and h:
                    out[rel] = h
        _hash_cache.update(key=key, hashes=out)
    return _hash_cache["hashes"]


def load_array(root: str | Path, rel: str) -> np.ndarray:
    """The memory-mapped curated array ``rel``, its content checked once per process against ``curate.json``."""
    curated = _root(root)
    path = curated / rel
    fix = f"delete it and rerun `mrgen curate -w {curated.parent}` (only that volume is curated again)"
    arr = io.load_npy(path, mmap=True, fix=fix)
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _checked:
        expect = _recorded_hashes(curated).get(rel)
        if expect and io.array_hash(arr) != expect:
            raise io.corrupt(path, "its content hash differs from the one curate.json records", fix)
        _checked.add(key)
    return arr


def load_image(root: str | Path, row: dict) -> np.ndarray:
    """float32 in [-1, 1]: ``(1, H, W)`` for a slice row, ``(1, Z, H, W)`` for a volume row."""
    arr = load_array(root, row["image"])
    if _is_slice(row):
        arr = arr[int(row["slice"])]
    return np.asarray(arr, dtype=np.float32)[None]


def load_mask(root: str | Path, row: dict) -> np.ndarray:
    """int64 labels ``(H, W)`` / ``(Z, H, W)``; zeros when ``row["mask"] == ""`` (unannotated)."""
    if not row.get("mask"):
        return np.zeros(tuple(int(s) for s in row["shape"]), dtype=np.int64)
    arr = load_array(root, row["mask"])
    if _is_slice(row):
        arr = arr[int(row["slice"])]
    return np.asarray(arr, dtype=np.int64)


def resize_volume(arr: np.ndarray, shape: tuple, order: int = 1) -> np.ndarray:
    """Resample the last three axes of ``(Z, H, W)`` or ``(C, Z, H, W)`` to ``shape``.

    ``order=1``: trilinear (float32 out); ``order=0``: nearest (labels; dtype kept).
    """
    import torch.nn.functional as F

    arr = np.asarray(arr)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or arr.ndim not in (3, 4):
        raise ValueError(f"resize_volume expects a (Z, H, W) or (C, Z, H, W) array and a 3-tuple shape, got {arr.shape} -> {shape}")
    if order not in (0, 1):
        raise ValueError(f"resize_volume order must be 0 (nearest) or 1 (linear), got {order}")
    out_dtype = arr.dtype if order == 0 else np.float32
    if arr.shape[-3:] == shape:
        return arr.astype(out_dtype, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    t = t[None, None] if arr.ndim == 3 else t[None]
    with torch.no_grad():
        if order == 0:
            t = F.interpolate(t, size=shape, mode="nearest-exact")
        else:
            t = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    out = t[0, 0] if arr.ndim == 3 else t[0]
    out = out.numpy()
    return (np.rint(out) if order == 0 else out).astype(out_dtype)


def item_shape(cfg) -> tuple[int, ...]:
    """The item shape of a run (``cfg``: a :class:`mrgen.config.Config`): ``(image_size, image_size)`` in 2D,
    ``(depth, image_size, image_size)`` in 3D. Every stage's images, masks and label maps have it."""
    s = int(cfg.data.image_size)
    return (s, s) if cfg.data.spatial_dims == 2 else (int(cfg.data.depth), s, s)


def load_row(root: str | Path, row: dict, shape: tuple | None = None, *, image: bool = True, mask: bool = True,
             only_context=(), drop_context=()) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One curated row as an item: ``(image, mask)``, image float32 ``shape`` in [-1, 1] (no channel axis),
    mask int64 ``shape`` (zeros when unannotated); ``None`` for the one not asked for (``image``/``mask``).

    ``shape``: the item shape (:func:`item_shape`). A volume row is resampled to it (image trilinear, mask
    nearest: label values are kept); a slice row must already have it (curation sized it to
    ``data.image_size``). ``None``: as stored, ``(H, W)`` or ``(Z, H, W)``.
    ``only_context``: context label values; the mask keeps only those (:func:`mrgen.curate.labels.context_only`,
    the controller's target conditioning). ``drop_context``: context label values set to background
    (:func:`mrgen.curate.labels.strip_context`, a segmenter's ground truth). Both act on the stored mask,
    before resampling."""
    from mrgen.curate.labels import context_only, strip_context

    if only_context and drop_context:
        raise ValueError("load_row: give only_context (keep the context labels) or drop_context (remove them), not both")
    img = load_image(root, row)[0] if image else None
    msk = load_mask(root, row) if mask else None
    stored = next((a.shape for a in (img, msk) if a is not None), None)
    if shape is not None and stored is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != len(stored):
            kind = "slice" if len(stored) == 2 else "volume"
            raise ValueError(f"{row['id']} is a {kind} row {stored} but the item shape is {shape}; query the index with "
                             f"kind='{'slice' if len(shape) == 2 else 'volume'}' for data.spatial_dims={len(shape)}")
        if len(shape) == 2 and stored != shape:
            raise ValueError(f"{row['id']}: slice shape {stored} != data.image_size {shape}; re-curate with this data config")
    if msk is not None and only_context:
        msk = context_only(msk, only_context)
    if msk is not None and drop_context:
        msk = strip_context(msk, drop_context)
    if shape is not None and len(shape) == 3:
        img = resize_volume(img, shape, order=1) if img is not None else None
        msk = resize_volume(msk, shape, order=0) if msk is not None else None
    return img, msk
