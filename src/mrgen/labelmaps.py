"""The label-map file format shared by ``labelgen`` (generated maps), ``morph`` (morphed maps) and
``mrgen synthesize`` (which renders both).

A label map is one ``.npz`` holding

* ``mask``: uint8 labels in the curated item layout, ``(H, W)`` (2D) or ``(Z, H, W)`` (3D), and
* ``meta``: a JSON string; ``meta["schema"]`` is the format version (:data:`SCHEMA`), the rest is the
  writer's record (id, kind, seed, prompt or recipe, organs, checkpoints, ...).

:func:`save_labels` is the one writer, :func:`load_labels` the one reader: a file written by a newer
mrgen (a larger ``schema``) is refused with a message instead of being half understood; a file with
no ``schema`` was written before versioning and reads as version 1 (the layout has not changed).
Also here: the label-name lookup of a curated run (:func:`label_names`), the organs a map holds
(:func:`organs_in`) and the mm spacing of a curated item (:func:`item_spacing`).

This module imports no stage package (only ``mrgen.io`` and ``mrgen.curate.labels``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mrgen import io

SCHEMA = 1  # bump when the file layout changes; load_labels refuses larger versions


def save_labels(path: str | Path, mask: np.ndarray, meta: dict) -> None:
    """Write ``mask`` (``(H, W)`` or ``(Z, H, W)`` labels in 0..255) and ``meta`` (JSON-able) atomically."""
    mask = np.asarray(mask)
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 255):
        raise ValueError(f"{path}: label values must lie in 0..255 to be stored as uint8, got "
                         f"[{int(mask.min())}, {int(mask.max())}]; remap the labels (curate keeps them in 1..255)")
    text = json.dumps({**meta, "schema": SCHEMA})
    io.write_npz(path, mask=mask.astype(np.uint8), meta=np.array(text))


def load_labels(path: str | Path) -> dict:
    """``{"mask": int64 (H, W) or (Z, H, W), "meta": dict}`` of a label map written by :func:`save_labels`."""
    with np.load(path, allow_pickle=False) as z:
        if "mask" not in z.files or "meta" not in z.files:
            raise ValueError(f"{path} is not a label map (it needs 'mask' and 'meta', has {sorted(z.files)}); "
                             "remove it and rerun the stage that writes that folder (labelgen or morph)")
        meta = json.loads(str(z["meta"]))
        io.check_schema(meta.get("schema", 1), path, SCHEMA, "remove the file and rerun the stage that wrote it")
        return {"mask": z["mask"].astype(np.int64), "meta": meta}


def dataset_names(curated: str | Path) -> dict[str, dict[int, str]]:
    """``{dataset: {value: name}}`` as ``curated/labels.json`` lists them (each dataset's own names; ``curated``:
    a run folder, ``curated/`` or its index); ``{}`` before curation."""
    from mrgen.curate.labels import LABELS_FILE, curated_dir

    path = curated_dir(curated) / LABELS_FILE
    if not path.exists():
        return {}
    return {str(d): {int(v): str(n) for v, n in m.items()} for d, m in io.read_json(path).items()}


def label_names(curated: str | Path) -> dict[int, str]:
    """``{value: name}`` of the segmentation labels of a curated run, naming the organs of a label map
    (:func:`organs_in`). One name per value: where datasets name a value differently, the last dataset in
    ``labels.json`` names it (a word the prompt vocabulary knows, where
    :func:`mrgen.curate.labels.target_names` would join the names)."""
    per_dataset = dataset_names(curated)
    if not per_dataset:
        raise FileNotFoundError(f"no label names under {curated} (curated/labels.json missing or empty); run `mrgen curate` first")
    return {v: n for d in per_dataset.values() for v, n in d.items()}


def organs_in(mask: np.ndarray, names: dict[int, str], min_voxels: int) -> list[str]:
    """Names of the labels (of ``names``; background excluded) with at least ``min_voxels`` voxels, by value."""
    values, counts = np.unique(mask, return_counts=True)
    return [names[int(v)] for v, c in zip(values, counts) if v and c >= min_voxels and int(v) in names]


def item_spacing(cfg, row: dict) -> tuple:
    """mm per voxel of a curated item: ``(x, y)`` for 2D slices, ``(z, x, y)`` for 3D volumes.

    Curation pads each slice to a square in mm and resizes it to ``data.image_size``; 3D items are
    further resampled to ``data.depth`` slices. ``row``: an index row (``spacing``, ``orig_shape``)."""
    grid = row.get("grid_spacing")
    if grid is not None and len(grid) == 3:  # mm per stored voxel (z, h, w), written by curate
        gz, gh, gw = (float(g) for g in grid)
        if cfg.data.spatial_dims == 2:
            return (gh, gw)
        return (gz * int((row.get("shape") or [cfg.data.depth])[0]) / cfg.data.depth, gh, gw)
    sx, sy, sz = (list(row.get("spacing") or [1.0, 1.0, 1.0]) + [1.0])[:3]
    nx, ny, nz = (list(row.get("orig_shape") or [cfg.data.image_size] * 3) + [1])[:3]
    inplane = max(nx * sx, ny * sy) / cfg.data.image_size
    if cfg.data.spatial_dims == 2:
        return (inplane, inplane)
    return (nz * sz / cfg.data.depth, inplane, inplane)
