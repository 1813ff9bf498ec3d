"""One volume: read, check, normalise, orient, resample, store.

Stored arrays are ``(Z, H, W)``: ``Z`` the slice axis, ``H``/``W`` the in-plane axes
(:mod:`mrgen.curate.geometry`; for axial slicing ``H`` is canonical RAS x, ``W`` is y), at the
run's grid (``data.spacing`` mm per pixel, ``data.image_size`` pixels). Images are float16 in
[-1, 1]; masks uint8 with the stored label values (file values mapped to 1..N, context labels
after them; the manifest's ``value_map``). A dataset's context labels (manifest ``context:``)
are merged into the stored mask of an annotated volume: the label where the mask is non-zero,
else the first context value whose context mask is non-zero there.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from mrgen import io
from mrgen.curate.geometry import (Grid, extent, orient, oriented, oriented_affine, place, plane_fov, resize_inplane,
                                   slice_axis, source_spacing, square_pad, window)
from mrgen.curate.inverse import source_grid
from mrgen.curate.manifest import CurateError, VolumeSpec

__all__ = ["process", "normalise", "square_pad", "resize_inplane", "stored_values", "read_checked", "composite"]

CT_WINDOW = (-300.0, 200.0)
MR_PERCENTILES = (0.5, 99.5)
BODY = 0.1  # crop: foreground on an unannotated series: normalised intensity above this is body


def source_hash(path: Path | None) -> str:
    """Content hash of a source file, or of every file of a DICOM folder; "" for no file."""
    if path is None:
        return ""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode())
            h.update(io.file_hash(f).encode())
        return h.hexdigest()[:16]
    return io.file_hash(path)


def context_hash(spec: VolumeSpec) -> str:
    """Content hash of the volume's context masks (and the values they get); "" without context."""
    if not spec.context:
        return ""
    h = hashlib.sha256()
    for value, path in spec.context:
        h.update(f"{value}:{source_hash(path)}\n".encode())
    return h.hexdigest()[:16]


def _read(path: Path, kind: str) -> io.Image:
    try:
        return io.read_image(path, kind=kind)
    except io.ImageError as exc:
        raise CurateError(str(exc)) from exc


def _check_grid(path: Path, what: str, arr: io.Image, img: io.Image, spec: VolumeSpec, affine_tol: float) -> None:
    if arr.array.shape != img.array.shape:
        raise CurateError(
            f"{path}: {what} shape {arr.array.shape} differs from image {spec.image} shape {img.array.shape} "
            f"(both in canonical RAS); resample the {what} onto the image grid"
        )
    diff = float(np.abs(arr.affine - img.affine).max())
    if diff > affine_tol:
        raise CurateError(
            f"{path}: {what} affine differs from image {spec.image} by {diff:.4g} mm (> curate.affine_tol={affine_tol}); "
            f"the {what} is on another grid — resample it onto the image, or raise curate.affine_tol if the headers only disagree by rounding"
        )


def read_context(spec: VolumeSpec, img: io.Image, affine_tol: float) -> list[tuple[int, np.ndarray]]:
    """``[(value, bool array)]`` of the volume's context masks (non-zero voxels), checked against the image grid."""
    out = []
    for value, path in spec.context:
        ctx = _read(path, "mask")
        _check_grid(path, "context mask", ctx, img, spec, affine_tol)
        out.append((int(value), ctx.array != 0))
    return out


def composite(mask: np.ndarray, context: list) -> np.ndarray:
    """The label where ``mask`` is non-zero, else the first context value whose mask covers the voxel."""
    out = np.asarray(mask).copy()
    free = out == 0
    for value, where in context:
        hit = free & where
        out[hit] = value
        free &= ~hit
    return out


def read_checked(spec: VolumeSpec, affine_tol: float) -> tuple[io.Image, io.Image | None]:
    """Read the image (and mask) of ``spec`` and run every check; raises CurateError."""
    img = _read(spec.image, "image")
    bad = ~np.isfinite(img.array)
    if bad.any():
        raise CurateError(
            f"{spec.image}: {int(bad.sum())} NaN/Inf voxels; fix the export (or replace them, e.g. with 0) before curating"
        )
    if spec.mask is None:
        return img, None
    mask = _read(spec.mask, "mask")
    _check_grid(spec.mask, "mask", mask, img, spec, affine_tol)
    values = np.unique(mask.array)
    values = [int(v) for v in values if v != 0]
    if not values:
        raise CurateError(
            f"{spec.mask}: mask is empty (no labels at all); drop this mask from the manifest (series without masks are allowed) or fix the export"
        )
    declared = spec.dataset.labels
    undeclared = [v for v in values if v not in declared]
    if undeclared:
        raise CurateError(
            f"{spec.mask}: label value(s) {undeclared} are not declared in the manifest labels {declared} "
            f"of dataset '{spec.dataset.name}'; add them to 'labels:' or fix the mask"
        )
    return img, mask


def normalise(arr: np.ndarray, mode: str) -> np.ndarray:
    """Intensities -> [0, 1] (MRGen appendix B).

    ``mr``: clip to the 0.5/99.5 percentiles; ``mr-fg``: the same percentiles taken over the
    foreground only (voxels above the volume minimum) — for skull-stripped data whose constant
    background would otherwise dominate them; ``ct``: clip [-300, 200] HU; ``minmax``: rescale
    already-normalised data.
    """
    arr = arr.astype(np.float32, copy=False)
    if mode == "mr":
        lo, hi = np.percentile(arr, MR_PERCENTILES)
    elif mode == "mr-fg":
        fg = arr[arr > arr.min()]
        lo, hi = np.percentile(fg, MR_PERCENTILES) if fg.size else (0.0, 0.0)
    elif mode == "ct":
        lo, hi = CT_WINDOW
    elif mode == "minmax":
        lo, hi = float(arr.min()), float(arr.max())
    else:
        raise CurateError(f"unknown normalize mode {mode!r}; use mr, ct or minmax")
    if hi <= lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def stored_values(arr: np.ndarray, value_map: dict) -> np.ndarray:
    """Mask values as in the file -> the stored 1..N (labels) and N+1.. (context); 0 stays 0."""
    arr = np.asarray(arr)
    if all(k == v for k, v in value_map.items()):
        return arr
    lut_in = np.array([0, *value_map], dtype=np.int64)
    lut_out = np.array([0, *value_map.values()], dtype=np.int64)
    order = np.argsort(lut_in)
    idx = np.searchsorted(lut_in[order], arr)  # every value was checked to be declared (read_checked)
    return lut_out[order][idx].astype(arr.dtype)


def _fit(zhw: np.ndarray, mzhw: np.ndarray | None, sp: list, grid: Grid, crop: str) -> tuple:
    """Source ``(Z, H, W)`` image (and mask) at ``sp`` = (h, w, z) mm -> the run's grid; returns (image, mask, record)."""
    rec: dict = {}
    if grid.depth:  # 3D: a window of the source slices that covers depth * z_spacing mm
        keep = grid.slices(sp[2])
        span = _span(mzhw, zhw, 0, crop)
        z0 = window(zhw.shape[0], keep, span)
        zhw = place(zhw, {0: z0}, keep, 0.0)
        mzhw = None if mzhw is None else place(mzhw, {0: z0}, keep, 0)
        rec["z_window"] = {"slices": keep, "start": z0}
    fov = plane_fov(zhw.shape[1:], sp[:2])
    n = grid.pixels(fov)
    img = resize_inplane(square_pad(zhw, sp[:2], 0.0), n, mask=False)
    m = None
    if mzhw is not None:
        m = np.rint(resize_inplane(square_pad(mzhw.astype(np.float32), sp[:2], 0.0), n, mask=True))
    starts = {a: window(n, grid.size, _span(m, img, a, crop)) for a in (1, 2)}
    img = place(img, starts, grid.size, 0.0)
    m = None if m is None else place(m, starts, grid.size, 0.0).astype(np.uint8)
    rec.update(fov_mm=round(fov, 4), scale_mm=round(fov / n, 6), resampled=n, start=[starts[1], starts[2]])
    return img, m, rec


def _span(mask: np.ndarray | None, img01: np.ndarray, axis: int, crop: str) -> tuple | None:
    """Foreground extent along ``axis`` for ``crop: foreground``: the labels, else the body (bright voxels)."""
    if crop != "foreground":
        return None
    if mask is not None and np.any(mask):
        return extent(mask > 0, axis)
    return extent(img01 > BODY, axis, min_fraction=0.05)


def process(spec: VolumeSpec, grid: Grid, affine_tol: float, curated: Path, staged: bool) -> dict:
    """Check, normalise, orient, resample and store one volume; return its record for curate.json."""
    img, mask = read_checked(spec, affine_tol)
    context = read_context(spec, img, affine_tol) if mask is not None else []
    ds = spec.dataset
    geo = slice_axis(img.array.shape, img.spacing, img.axes, img.affine, ds.slice_axis)
    sp = source_spacing(img.spacing, geo, spec.pixel_spacing)
    merged = None
    if mask is not None:
        stored_context = [(ds.value_map.get(v, v), where) for v, where in context]
        merged = composite(stored_values(mask.array, ds.value_map), stored_context)
    zhw = orient(normalise(img.array, ds.normalize), geo)
    stored, m, placed = _fit(zhw, None if merged is None else orient(merged, geo), sp, grid, ds.crop)
    stored = np.clip(stored * 2.0 - 1.0, -1.0, 1.0).astype(np.float16)
    rel = array_paths(spec)
    record = {
        "key": spec.key, "dataset": ds.name, "subject": spec.subject, "modality": spec.modality,
        "source": os.path.abspath(spec.image), "mask_source": os.path.abspath(spec.mask) if spec.mask else "",
        "context_source": context_sources(spec), "image": rel[0], "mask": rel[1] if mask is not None else "",
        "shape": list(stored.shape), "orig_shape": [int(s) for s in oriented(img.array.shape, geo)],
        "spacing": [float(s) for s in sp],
        "affine": [float(v) for v in oriented_affine(img.affine, img.array.shape, geo, spec.pixel_spacing).ravel()],
        "grid_spacing": [float(sp[2]), placed["scale_mm"], placed["scale_mm"]],
        "geometry": {**geo.record(), **placed, **({"header_spacing": [float(s) for s in oriented(img.spacing, geo)]}
                                                    if spec.pixel_spacing else {})}, "orientation": img.orientation,
        "reoriented": bool(img.reoriented), "source_grid": source_grid(img.array.shape, img.affine, img.orientation),
        "image_hash": io.array_hash(stored),
        "mask_hash_stored": "", "mask_values": [], "context_values": [], "label_counts": {}, "staged": staged,
    }
    # everything is checked and computed before the first byte of this volume is written
    if mask is not None:
        record["mask_hash_stored"] = io.array_hash(m)
        record["mask_values"] = sorted(int(v) for v in np.unique(mask.array) if v != 0)  # as in the file, without context
        present = {int(v) for v in np.unique(merged)}
        record["context_values"] = [v for v, _ in stored_context if v in present]
        flat = m.reshape(m.shape[0], -1)
        counted = [ds.value_map.get(v, v) for v in record["mask_values"]] + record["context_values"]
        record["label_counts"] = {str(v): [int(c) for c in (flat == v).sum(axis=1)] for v in counted}
    base = curated / ".staging" if staged else curated
    io.save_npy(base / rel[0], stored)
    if mask is not None:
        io.save_npy(base / rel[1], m)
    return record


def context_sources(spec: VolumeSpec) -> dict:
    """``{value: absolute path}`` of the volume's context masks (provenance in curate.json)."""
    return {str(v): os.path.abspath(p) for v, p in spec.context}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", name)


def array_paths(spec: VolumeSpec) -> tuple[str, str]:
    """``arrays/<dataset>/<subject>/<modality>_{image,mask}.npy`` (relative to ``curated/``)."""
    folder = f"arrays/{_safe(spec.dataset.name)}/{_safe(spec.subject)}"
    return f"{folder}/{_safe(spec.modality)}_image.npy", f"{folder}/{_safe(spec.modality)}_mask.npy"
