"""What curate decided about geometry and labels, for the user to see: the run's grid, a per-dataset
summary (``curate.json`` ``summary.<dataset>.geometry``, printed by ``mrgen curate``) and a preview PNG
per dataset (``curated/preview_<dataset>.png``: a few stored slices per series, masks overlaid)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from mrgen import io
from mrgen.curate.geometry import Grid, auto_spacing, oriented, plane_fov, slice_axis, source_spacing
from mrgen.curate.index import replace_if_changed
from mrgen.curate.manifest import CurateError, DatasetSpec
from mrgen.curate.volume import _safe

PREVIEW_VOLUMES = 2  # per series
PREVIEW_SLICES = 5  # per volume


def plan_grid(data, specs: list) -> Grid:
    """The run's :class:`Grid` from ``data`` (``DataCfg``): ``data.spacing``, or with 0 the median over the
    annotated series (all series when none is annotated) of field of view / ``image_size``; in 3D the slice
    axis likewise (median slab thickness / ``depth``, or ``data.spacing`` when given: the same in all axes)."""
    size = int(data.image_size)
    given = float(data.spacing or 0.0)
    three_d = int(data.spatial_dims) == 3
    fovs, slabs = [], []
    if not given:
        for spec in [s for s in specs if s.mask is not None] or specs:  # headers only for NIfTI
            try:
                g = io.read_geometry(spec.image)
            except io.ImageError as exc:
                raise CurateError(str(exc)) from exc
            o = slice_axis(g.shape, g.spacing, g.axes, g.affine, spec.dataset.slice_axis)
            shape, sp = oriented(g.shape, o), source_spacing(g.spacing, o, spec.pixel_spacing)
            fovs.append(plane_fov(shape[:2], sp[:2]))
            slabs.append(shape[2] * float(sp[2]))
    spacing = given or auto_spacing(fovs, size)
    if not three_d:
        return Grid(size, spacing)
    depth = int(data.depth)
    return Grid(size, spacing, depth, given or float(np.median(slabs)) / depth)


def dataset_geometry(ds: DatasetSpec, records: list[dict]) -> dict:
    """Per-dataset summary of the decisions: slice axis, in-plane axes, scale, crop/pad, label mapping."""
    geo = [r["geometry"] for r in records]
    scale = [g["scale_mm"] for g in geo]
    size = records[0]["shape"][-1] if records else 0
    px = [g["resampled"] for g in geo]
    out = {
        "slice_axis": ds.slice_axis,
        "cut": dict(sorted(Counter(f"{g['slice_axis']} ({g['rule']})" for g in geo).items())),
        "inplane": dict(sorted(Counter(g["inplane"] for g in geo).items())),
        "slices": [min(r["shape"][0] for r in records), max(r["shape"][0] for r in records)] if records else [],
        "scale_mm": [min(scale), max(scale)] if scale else [],
        "fov_mm": [min(g["fov_mm"] for g in geo), max(g["fov_mm"] for g in geo)] if geo else [],
        "resampled_px": [min(px), max(px)] if px else [],
        "crop": ds.crop, "cropped": sum(p > size for p in px), "padded": sum(p < size for p in px),
        "labels": {str(v): f"{ds.value_map[v]}: {n}" for v, n in ds.labels.items()},
    }
    fixed = {se.modality: list(se.pixel_spacing) for se in ds.series if se.pixel_spacing}
    if fixed:  # manifest pixel_spacing replaced these series' header spacing
        out["pixel_spacing"] = fixed
    if ds.context:
        out["context"] = {str(c.value): f"{ds.value_map[c.value]}: {c.name}" for c in ds.context}
    return out


def _span(pair: list) -> str:
    return "" if not pair else (f"{pair[0]:.3g}" if pair[0] == pair[1] else f"{pair[0]:.3g}-{pair[1]:.3g}")


def summary_lines(datasets: list, summary: dict) -> dict:
    """``{"geometry <dataset>": one line}`` for ``mrgen curate``'s printed summary."""
    out = {}
    for ds in datasets:
        g = summary[ds.name]["geometry"]
        cut = ", ".join(f"{k} x{n}" for k, n in g["cut"].items())
        values = ", ".join(f"{v}->{m}" for v, m in g["labels"].items())
        ctx = ", ".join(f"{v}->{m}" for v, m in g.get("context", {}).items())
        out[f"geometry {ds.name}"] = (
            f"slices along {cut} ({_span(g['slices'])} per volume), in-plane {'/'.join(g['inplane'])}; "
            f"{_span(g['scale_mm'])} mm/px (fov {_span(g['fov_mm'])} mm -> {_span(g['resampled_px'])} px), "
            f"{g['crop']} crop: {g['cropped']} cropped, {g['padded']} padded; labels {values or 'none'}"
            + (f"; context {ctx}" if ctx else "")
            + "".join(f"; {m} pixel_spacing {v[0]:g}x{v[1]:g} mm (manifest, not the headers)" for m, v in g.get("pixel_spacing", {}).items()))
    return out


def _slices(rec: dict, n: int) -> list[int]:
    """Up to ``n`` slice indices, evenly spread over the slices holding labels (else over all)."""
    depth = int(rec["shape"][0])
    held = sorted({z for c in rec.get("label_counts", {}).values() for z, px in enumerate(c) if px})
    pool = held or list(range(depth))
    pick = np.linspace(0, len(pool) - 1, num=min(n, len(pool))).round().astype(int)
    return [pool[i] for i in dict.fromkeys(pick.tolist())]


def write_previews(curated: Path, datasets: list, specs: list, records: dict) -> list[Path]:
    """``curated/preview_<dataset>.png``: per series the first volumes (annotated first), a few slices each."""
    from mrgen.figures import slice_grid

    top = max([0, *(v for ds in datasets for v in ds.value_map.values())]) or 1
    written = []
    for ds in datasets:
        rows = []
        for series in ds.series:
            recs = [records[s.key] for s in specs if s.dataset is ds and s.modality == series.modality]
            for rec in sorted(recs, key=lambda r: (not r["mask"], r["subject"]))[:PREVIEW_VOLUMES]:
                img = io.load_npy(curated / rec["image"])
                msk = io.load_npy(curated / rec["mask"]) if rec["mask"] else None
                g = rec["geometry"]
                rows.append({"name": f"{rec['modality']} {rec['subject']}\n{g['slice_axis']} {g['inplane']} {g['scale_mm']:.2f} mm/px",
                             "slices": [(f"z{z}", img[z], None if msk is None else msk[z]) for z in _slices(rec, PREVIEW_SLICES)]})
        if not rows:
            continue
        fig = slice_grid(rows, title=f"{ds.name}: curated slices (image_size {rows[0]['slices'][0][1].shape[0]})", top=top)
        path = curated / f"preview_{_safe(ds.name)}.png"
        replace_if_changed(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        written.append(path)
    return written
