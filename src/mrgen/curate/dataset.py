"""Load curated items for the training stages (arrays are memory-mapped ``.npy``).

``root`` is the ``curated/`` folder; ``row`` is an index row (a dict from ``Index.query``).
Slice rows give ``(1, H, W)`` images and ``(H, W)`` masks; volume rows ``(1, Z, H, W)``
and ``(Z, H, W)``. Images are float32 in [-1, 1]; masks int64 (zeros when unannotated).
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


def load_image(root: str | Path, row: dict) -> np.ndarray:
    """float32 in [-1, 1]: ``(1, H, W)`` for a slice row, ``(1, Z, H, W)`` for a volume row."""
    arr = io.load_npy(_root(root) / row["image"], mmap=True)
    if _is_slice(row):
        arr = arr[int(row["slice"])]
    return np.asarray(arr, dtype=np.float32)[None]


def load_mask(root: str | Path, row: dict) -> np.ndarray:
    """int64 labels ``(H, W)`` / ``(Z, H, W)``; zeros when ``row["mask"] == ""`` (unannotated)."""
    if not row.get("mask"):
        return np.zeros(tuple(int(s) for s in row["shape"]), dtype=np.int64)
    arr = io.load_npy(_root(root) / row["mask"], mmap=True)
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


class ItemDataset(torch.utils.data.Dataset):
    """Curated rows as training items.

    Returns ``{"image": (1,H,W) or (1,D,H,W) float, "mask": (H,W)/(D,H,W) long, "prompt": str, "id": str}``;
    ``with_mask=False`` leaves out ``mask`` (no mask file is read). With ``spatial_dims=3`` and
    ``depth`` set, volumes are resampled along z to ``depth`` slices at load time.
    """

    def __init__(self, index_root: str | Path, rows: list[dict], spatial_dims: int, depth: int | None = None,
                 with_mask: bool = True):
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        want = "slice" if spatial_dims == 2 else "volume"
        rows = list(rows)
        wrong = [r["id"] for r in rows if _is_slice(r) != (want == "slice")]
        if wrong:
            raise ValueError(
                f"spatial_dims={spatial_dims} needs {want} rows but got {len(wrong)} others (e.g. {wrong[0]}); "
                f"query the index with kind='{want}'"
            )
        self.root = _root(index_root)
        self.rows = rows
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.with_mask = with_mask

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        image = load_image(self.root, row)
        mask = load_mask(self.root, row) if self.with_mask else None
        if self.spatial_dims == 3 and self.depth:
            _, _, h, w = image.shape
            image = resize_volume(image, (self.depth, h, w), order=1)
            if mask is not None:
                mask = resize_volume(mask, (self.depth, h, w), order=0)
        item = {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                "prompt": row["prompt"], "id": row["id"]}
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
        return item
