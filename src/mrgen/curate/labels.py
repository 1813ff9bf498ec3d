"""The label sets of a curated run: segmentation targets vs conditioning-only *context* labels.

``curated/labels.json`` = ``{dataset: {value: name}}`` lists the **segmentation labels** (what a
segmenter learns, what evaluation and export report). ``curated/context.json`` (same layout)
lists the **context labels** a manifest's ``context:`` key merged into the stored masks (e.g.
BraTS ``5: brain``): the generator is conditioned on them, every segmenter path maps them to
background (:func:`strip_context`). Both files are written by ``mrgen curate``; a run curated
before context labels existed has no ``context.json``, which means "no context labels".

Every value here is a **stored** value: curate maps the values of the user's mask files (e.g.
MS-CMRSeg's 200/500/600) to consecutive 1..N, context labels after them (N+1..);
``curated/label_values.json`` = ``{dataset: {stored: file value}}`` records the mapping
(:func:`original_values`). Runs whose files already hold 1..N have the identity mapping.

Every function takes the run folder, its ``curated/`` folder or ``curated/index.parquet``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LABELS_FILE = "labels.json"
CONTEXT_FILE = "context.json"
VALUES_FILE = "label_values.json"


def curated_dir(path: str | Path) -> Path:
    """The ``curated/`` folder of a run folder, a curated folder or an index file."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if not (p / LABELS_FILE).exists() and not (p / "index.parquet").exists() and (p / "curated").is_dir():
        p = p / "curated"
    return p


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _merge(per_dataset: dict) -> dict:
    """``{dataset: {value: name}}`` -> ``{value: name}`` (names joined with '/' when datasets disagree)."""
    merged: dict = {}
    for d in per_dataset.values():
        for v, n in d.items():
            v = int(v)
            if v == 0:
                continue
            merged[v] = n if v not in merged or merged[v] == n else f"{merged[v]}/{n}"
    return dict(sorted(merged.items()))


def target_names(path: str | Path) -> dict:
    """``{value: name}`` of the segmentation labels (``labels.json``; context labels never appear)."""
    p = curated_dir(path) / LABELS_FILE
    if not p.exists():
        raise FileNotFoundError(f"{p} not found; run `mrgen curate` first")
    names = _merge(_read(p))
    ctx = context_values(path)
    return {v: n for v, n in names.items() if v not in ctx}


def context_names(path: str | Path) -> dict:
    """``{value: name}`` of the context (conditioning-only) labels; ``{}`` when there are none."""
    return _merge(_read(curated_dir(path) / CONTEXT_FILE))


def context_values(path: str | Path) -> set[int]:
    """The context label values of a curated run (mapped to background for every segmenter)."""
    return set(context_names(path))


def original_values(path: str | Path) -> dict:
    """``{stored value: value in the user's mask files}`` of the segmentation and context labels.

    Runs curated before the mapping was recorded (no ``label_values.json``) stored the file values: identity."""
    p = curated_dir(path) / VALUES_FILE
    if not p.exists():
        return {v: v for v in sorted({*target_names(path), *context_values(path)})}
    out: dict = {}
    for d in _read(p).values():
        for stored, value in d.items():
            out[int(stored)] = int(value)
    return dict(sorted(out.items()))


def n_classes(path: str | Path) -> int:
    """Segmenter output classes: background + every segmentation label value (context excluded)."""
    return 1 + max([0, *target_names(path)])


def n_labels(path: str | Path) -> int:
    """Largest value the stored masks may hold, context labels included (the generator's conditioning)."""
    return max([0, *target_names(path), *context_values(path)])


def strip_context(mask, values) -> np.ndarray:
    """``mask`` with every value in ``values`` set to 0 (background); the same array when there is nothing to do."""
    values = sorted(int(v) for v in (values or ()))
    mask = np.asarray(mask)
    if not values:
        return mask
    hit = np.isin(mask, values)
    if not hit.any():
        return mask
    out = np.array(mask, copy=True)
    out[hit] = 0
    return out


def context_only(mask, values) -> np.ndarray:
    """Only the context labels of ``mask`` (e.g. the brain outline of an unannotated target image):
    every segmentation voxel takes the label of the nearest context voxel, so the union of the
    labelled voxels is kept and the shapes of the segmentation labels are not. All zeros when the
    mask holds no context label (or ``values`` is empty)."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask)
    ctx = np.isin(mask, sorted(int(v) for v in (values or ())))
    if not ctx.any():
        return np.zeros_like(mask)
    out = np.where(ctx, mask, 0).astype(mask.dtype)
    seg = (mask != 0) & ~ctx
    if seg.any():
        nearest = ndi.distance_transform_edt(~ctx, return_distances=False, return_indices=True)
        out[seg] = mask[tuple(i[seg] for i in nearest)]
    return out
