"""One volume: read, check, normalise, resample in-plane, store.

Stored arrays are ``(Z, H, W)``: ``H`` is canonical RAS x, ``W`` is y, ``z`` untouched.
Images are float16 in [-1, 1]; masks uint8. A dataset's context labels (manifest ``context:``)
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
from mrgen.curate.manifest import CurateError, VolumeSpec

CT_WINDOW = (-300.0, 200.0)
MR_PERCENTILES = (0.5, 99.5)


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


def square_pad(arr: np.ndarray, spacing: tuple, fill: float) -> np.ndarray:
    """Pad ``(Z, X, Y)`` symmetrically so both in-plane axes cover the same extent in mm."""
    _, nx, ny = arr.shape
    sx, sy = float(spacing[0]) or 1.0, float(spacing[1]) or 1.0
    extent = max(nx * sx, ny * sy)
    tx, ty = max(nx, int(round(extent / sx))), max(ny, int(round(extent / sy)))
    px, py = tx - nx, ty - ny
    if not (px or py):
        return arr
    return np.pad(arr, ((0, 0), (px // 2, px - px // 2), (py // 2, py - py // 2)), constant_values=fill)


def resize_inplane(arr: np.ndarray, size: int, mask: bool) -> np.ndarray:
    """``(Z, X, Y)`` -> ``(Z, size, size)``: antialiased bilinear for images, nearest for masks."""
    import torch
    import torch.nn.functional as F

    if arr.shape[1:] == (size, size):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[:, None]
    with torch.no_grad():
        if mask:
            out = F.interpolate(t, size=(size, size), mode="nearest-exact")
        else:
            down = size < max(arr.shape[1:])
            out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=down)
    return out[:, 0].numpy()


def process(spec: VolumeSpec, size: int, affine_tol: float, curated: Path, staged: bool) -> dict:
    """Check, normalise, resample and store one volume; return its record for curate.json."""
    img, mask = read_checked(spec, affine_tol)
    context = read_context(spec, img, affine_tol) if mask is not None else []
    img01 = normalise(img.array, spec.dataset.normalize)
    zxy = np.transpose(img01, (2, 0, 1))
    stored = resize_inplane(square_pad(zxy, img.spacing, 0.0), size, mask=False)
    stored = np.clip(stored * 2.0 - 1.0, -1.0, 1.0).astype(np.float16)
    rel = array_paths(spec)
    record = {
        "key": spec.key, "dataset": spec.dataset.name, "subject": spec.subject, "modality": spec.modality,
        "source": os.path.abspath(spec.image), "mask_source": os.path.abspath(spec.mask) if spec.mask else "",
        "context_source": context_sources(spec), "image": rel[0], "mask": rel[1] if mask is not None else "",
        "shape": list(stored.shape), "orig_shape": [int(s) for s in img.array.shape],
        "spacing": [float(s) for s in img.spacing], "affine": [float(v) for v in np.asarray(img.affine).ravel()],
        "orientation": img.orientation,
        "reoriented": bool(img.reoriented), "image_hash": io.array_hash(stored),
        "mask_hash_stored": "", "mask_values": [], "context_values": [], "label_counts": {}, "staged": staged,
    }
    # everything is checked and computed before the first byte of this volume is written
    if mask is not None:
        merged = composite(mask.array, context)
        m = np.transpose(merged, (2, 0, 1)).astype(np.float32)
        m = resize_inplane(square_pad(m, img.spacing, 0.0), size, mask=True)
        m = np.rint(m).astype(np.uint8)
        record["mask_hash_stored"] = io.array_hash(m)
        record["mask_values"] = sorted(int(v) for v in np.unique(mask.array) if v != 0)  # the labels, without context
        present = {int(v) for v in np.unique(merged)}
        record["context_values"] = [v for v, _ in context if v in present]
        flat = m.reshape(m.shape[0], -1)
        record["label_counts"] = {
            str(v): [int(c) for c in (flat == v).sum(axis=1)] for v in record["mask_values"] + record["context_values"]
        }
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
