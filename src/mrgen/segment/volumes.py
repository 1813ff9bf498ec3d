"""Index rows -> whole volumes for prediction and 3D evaluation.

Slice rows of one series (same ``image`` array) are stacked back in slice order, as the paper
evaluates (3D Dice per volume); volume rows are used as they are (resampled to the shape the
3D model was trained on). Arrays are ``(Z, X, Y)``; ``spacing`` is in mm in the same order,
corrected for the curation's in-plane (and, in 3D, through-plane) resampling.

:func:`on_source_grid` takes a volume's prediction back to its source file's voxels (and label values).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


def _is_slice(row: dict) -> bool:
    return row.get("kind", "slice" if int(row.get("slice", -1)) >= 0 else "volume") == "slice"


def group_volumes(rows: list[dict]) -> "OrderedDict[str, list[dict]]":
    """``{volume key: rows sorted by slice}``; key = the row id without its ``/z…`` suffix."""
    groups: OrderedDict = OrderedDict()
    for r in sorted(rows, key=lambda r: (str(r["id"]).rsplit("/z", 1)[0] if _is_slice(r) else str(r["id"]), int(r.get("slice", -1)))):
        key = str(r["id"]).rsplit("/z", 1)[0] if _is_slice(r) else str(r["id"])
        groups.setdefault(key, []).append(r)
    return groups


def _spacing(row: dict, stored: tuple) -> tuple:
    """mm per axis of the stored item, in (Z, X, Y) order: the index's ``grid_spacing`` (mm per stored voxel,
    written by curate), or for an index curated before it, derived from the source spacing and shape."""
    if row.get("grid_spacing") is not None and len(row["grid_spacing"]) == 3:
        return tuple(float(s) for s in row["grid_spacing"])
    sp = [float(s) for s in (row.get("spacing") or [1.0, 1.0, 1.0])]
    orig = [int(s) for s in (row.get("orig_shape") or [])]
    if len(sp) < 3:
        sp = sp + [1.0] * (3 - len(sp))
    if len(orig) < 3:
        return (sp[2], sp[0], sp[1])
    if len(stored) == 2:  # slice: (X', Y')
        return (sp[2], sp[0] * orig[0] / stored[0], sp[1] * orig[1] / stored[1])
    return (sp[2] * orig[2] / stored[0], sp[0] * orig[0] / stored[1], sp[1] * orig[1] / stored[2])


def load_rows(root, rows: list[dict], shape: tuple | None = None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """One volume from its rows: (image (Z, X, Y) float32, mask (Z, X, Y) int64, spacing (Z, X, Y) mm).

    ``shape``: resample a volume row to this (Z, X, Y) (3D models); ignored for slice rows. The mask is
    the segmentation ground truth: context labels (``curated/context.json``) are background.
    """
    from mrgen.curate.dataset import load_row
    from mrgen.curate.labels import context_values

    drop = context_values(root)
    if _is_slice(rows[0]):
        pairs = [load_row(root, r, drop_context=drop) for r in rows]
        img = np.stack([p[0] for p in pairs]).astype(np.float32)
        msk = np.stack([p[1] for p in pairs]).astype(np.int64)
        return img, msk, _spacing(rows[0], img.shape[1:])
    r = rows[0]
    img, msk = load_row(root, r, shape, drop_context=drop)
    stored = tuple(int(s) for s in r["shape"])  # the stored (Z, X, Y), before load_row resamples it
    sp = _spacing(r, stored)
    if shape is not None and tuple(shape) != stored:  # mm per voxel scales with stored / new size
        sp = tuple(s * a / b for s, a, b in zip(sp, stored, shape))
    return img.astype(np.float32), msk.astype(np.int64), sp


def predict_rows(model, rows: list[dict], root):
    """Yield ``{key, ids, image, gt, pred, spacing}`` per volume for a loaded segmenter."""
    from mrgen.segment import predict

    shape = None
    if model.spatial_dims == 3:
        shape = tuple(getattr(model, "meta", {}).get("image_shape", []) or []) or None
    for key, rs in group_volumes(rows).items():
        img, gt, sp = load_rows(root, rs, shape)
        if model.spatial_dims == 2:
            pred = np.stack([predict(model, s) for s in img])
        else:
            pred = predict(model, img)
        yield {"key": key, "ids": [r["id"] for r in rs], "image": img, "gt": gt, "pred": pred, "spacing": sp}


def _file_dtype(top: int):
    """The smallest unsigned integer type that holds label values up to ``top`` (MM-WHS has 850)."""
    return next(t for t in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(t).max)


def on_source_grid(pred: np.ndarray, rows: list[dict], record: dict, values: dict | None = None) -> np.ndarray:
    """A volume's prediction (as :func:`predict_rows` yields it) -> the source file's voxel layout.

    ``pred``: ``(Z, X, Y)`` labels, one slice per row of ``rows`` (2D) or a volume at the model's shape (3D,
    resampled back to the stored shape by nearest neighbour); ``record``: the volume's ``curate.json`` entry
    (:func:`mrgen.curate.inverse.to_source_grid`); ``values``: ``{stored: file value}``
    (:func:`mrgen.curate.labels.original_values`) to write the values of the user's mask files, None for the
    stored 1..N. Returns the file's ``(i, j, k)`` array, uint8 (uint16 when a value is above 255)."""
    from mrgen.curate.dataset import resize_volume
    from mrgen.curate.inverse import to_source_grid

    stored = tuple(int(s) for s in record["shape"])
    pred = np.asarray(pred)
    if _is_slice(rows[0]):  # slices not predicted (not in rows) stay background
        full = np.zeros(stored, np.int64)
        full[[int(r["slice"]) for r in rows]] = pred
    else:
        full = resize_volume(pred.astype(np.int64), stored, order=0)
    out = to_source_grid(full, record)
    if values:
        lut = np.arange(max(int(out.max()), *values) + 1, dtype=np.int64)  # values without a mapping stay as they are
        for k, v in values.items():
            lut[int(k)] = int(v)
        out = lut[out]
    return out.astype(_file_dtype(int(out.max()) if out.size else 0))
