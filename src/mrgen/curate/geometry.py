"""Where a volume is cut and on which grid its slices are stored (docs/curate.md#geometry).

**Slice axis.** The slices of a 2D item are the planes of the acquisition: the voxel axis whose
spacing is clearly the largest (at least :data:`ANISOTROPY` times both others; nnU-Net's
low-resolution axis), whatever world direction the affine gives it. A near-isotropic volume is
cut along canonical S (axial), as before. A dataset's manifest ``slice_axis`` overrides this.

**Orientation.** Volumes are first brought to canonical RAS+ (``nibabel.as_closest_canonical``).
The stored array is ``(Z, H, W)``: ``Z`` the slice axis, ``H``/``W`` the two other canonical axes
in R, A, S order, so one dataset's in-plane axes follow the same world axes; the slice order is
reversed when needed so that ``(H, W, Z)`` is right-handed like RAS (two stacks of one anatomy
whose files run opposite ways, e.g. codes PSR and LSP, then run the same way). Canonical axial
slicing, ``(S, R, A)`` order, is today's ``(z, x, y)`` and changes nothing.

**Grid.** Each slice plane is padded to a square field of view in mm, resampled to ``spacing`` mm
per pixel (``n = round(fov / spacing)`` pixels) and cropped or padded to ``size`` (a centre window,
or one centred on the foreground). In 3D the slice axis gets a window of the slices that cover
``depth × z_spacing`` mm at the source resolution; the loader stretches it to ``data.depth``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANISOTROPY = 1.5  # the slice axis is the voxel axis whose spacing is >= 1.5x both others
WORLD = "RAS"
NAMED = {"sagittal": 0, "coronal": 1, "axial": 2}
FILE_AXES = "ijk"


@dataclass(frozen=True)
class Orientation:
    """How a canonical ``(X, Y, Z)`` array becomes the stored ``(Z, H, W)``."""

    axis: int  # canonical axis the slices are stacked along (0 R, 1 A, 2 S)
    inplane: tuple  # the two other canonical axes, in order: stored H, W
    flip: bool  # slice order reversed so that (H, W, Z) is right-handed
    rule: str  # acquisition | canonical | single slice | manifest
    file_axis: int  # the source file's voxel axis the slices are stacked along

    @property
    def perm(self) -> tuple:
        return (*self.inplane, self.axis)

    def record(self) -> dict:
        return {"slice_axis": WORLD[self.axis], "file_axis": FILE_AXES[self.file_axis], "rule": self.rule,
                "inplane": "".join(WORLD[a] for a in self.inplane), "flipped": self.flip}

    @classmethod
    def from_record(cls, geo: dict) -> "Orientation":
        """The orientation a volume's ``curate.json`` ``geometry`` (:meth:`record`) describes."""
        return cls(WORLD.index(geo["slice_axis"]), tuple(WORLD.index(c) for c in geo["inplane"]), bool(geo["flipped"]),
                   str(geo["rule"]), FILE_AXES.index(geo["file_axis"]))


def slice_axis(shape: tuple, spacing: tuple, axes: tuple, affine: np.ndarray, override: str = "auto") -> Orientation:
    """The :class:`Orientation` of a canonical volume (``shape``/``spacing``/``affine`` in RAS+ order,
    ``axes[c]`` = the file voxel axis at canonical axis ``c``); ``override`` is the manifest's ``slice_axis``."""
    if override in NAMED:
        axis, rule = NAMED[override], "manifest"
    elif override in FILE_AXES:
        axis, rule = list(axes).index(FILE_AXES.index(override)), "manifest"
    else:
        single = [a for a in range(3) if shape[a] == 1]
        order = sorted(range(3), key=lambda a: (-float(spacing[a]), a))
        if len(single) == 1:  # a 2D image: its one plane
            axis, rule = single[0], "single slice"
        elif float(spacing[order[0]]) >= ANISOTROPY * float(spacing[order[1]]):
            axis, rule = order[0], "acquisition"
        else:
            axis, rule = 2, "canonical"
    inplane = tuple(a for a in range(3) if a != axis)
    flip = bool(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, [*inplane, axis]]) < 0)
    return Orientation(axis, inplane, flip, rule, int(axes[axis]))


def orient(arr: np.ndarray, o: Orientation) -> np.ndarray:
    """Canonical ``(X, Y, Z)`` -> stored order ``(Z, H, W)`` (a view)."""
    out = np.transpose(arr, (o.axis, *o.inplane))
    return out[::-1] if o.flip else out


def unorient(zhw: np.ndarray, o: Orientation) -> np.ndarray:
    """Stored order ``(Z, H, W)`` -> canonical ``(X, Y, Z)``: the inverse of :func:`orient` (a view)."""
    arr = zhw[::-1] if o.flip else zhw
    return np.transpose(arr, np.argsort((o.axis, *o.inplane)))


def oriented(values, o: Orientation) -> list:
    """Per-axis values of the canonical volume (shape, spacing) in source ``(H, W, Z)`` order."""
    return [values[a] for a in o.perm]


def source_spacing(spacing: tuple, o: Orientation, pixel_spacing: tuple = ()) -> list:
    """``(h, w, z)`` mm of the source voxels; ``pixel_spacing`` (a series' manifest override) replaces ``h, w``."""
    sp = [float(s) for s in oriented(spacing, o)]
    return [float(pixel_spacing[0]), float(pixel_spacing[1]), sp[2]] if pixel_spacing else sp


def oriented_affine(affine: np.ndarray, shape: tuple, o: Orientation, pixel_spacing: tuple = ()) -> np.ndarray:
    """The affine of the source voxels in ``(H, W, Z)`` order (slice order as stored) -> RAS mm.

    With ``pixel_spacing`` the in-plane columns are rescaled to it (same directions and origin)."""
    a = np.asarray(affine, dtype=np.float64)[:, [*o.perm, 3]].copy()
    for k, s in enumerate(pixel_spacing):
        a[:3, k] *= float(s) / (np.linalg.norm(a[:3, k]) or 1.0)
    if o.flip:
        a[:3, 3] += a[:3, 2] * (int(shape[o.axis]) - 1)
        a[:3, 2] *= -1
    return a


def plane_fov(shape_hw, spacing_hw) -> float:
    """In-plane field of view in mm of a slice plane: its longer side (it is padded to a square)."""
    return max(int(shape_hw[0]) * float(spacing_hw[0] or 1.0), int(shape_hw[1]) * float(spacing_hw[1] or 1.0))


def auto_spacing(fovs: list[float], size: int) -> float:
    """``data.spacing=0``: the median over the annotated series of ``fov / size`` mm per pixel.

    With one field of view for all series this is today's resize to ``size``; otherwise every
    series is resampled to one physical scale, as nnU-Net resamples to the median spacing."""
    return float(np.median(np.asarray(fovs, dtype=np.float64) / float(size)))


@dataclass(frozen=True)
class Grid:
    """The stored grid of a run: ``size`` px at ``spacing`` mm in-plane; in 3D also ``depth`` slices at ``z_spacing``."""

    size: int
    spacing: float
    depth: int = 0  # 0: 2D (every slice of the acquisition is kept)
    z_spacing: float = 0.0

    def pixels(self, fov: float) -> int:
        """Side of the square plane after resampling, before the crop or pad to ``size``."""
        return max(1, int(round(fov / self.spacing)))

    def slices(self, z_spacing_src: float) -> int:
        """3D: source slices that cover ``depth * z_spacing`` mm."""
        return max(1, int(round(self.depth * self.z_spacing / (float(z_spacing_src) or 1.0))))

    def settings(self) -> dict:
        out = {"spacing": round(self.spacing, 9)}
        if self.depth:
            out.update(depth=self.depth, z_spacing=round(self.z_spacing, 9))
        return out


def square_widths(shape_hw, spacing: tuple) -> tuple:
    """``((before, after), (before, after))`` padding of an ``(H, W)`` plane so both axes cover the same mm."""
    nx, ny = int(shape_hw[0]), int(shape_hw[1])
    sx, sy = float(spacing[0]) or 1.0, float(spacing[1]) or 1.0
    extent = max(nx * sx, ny * sy)
    px, py = max(nx, int(round(extent / sx))) - nx, max(ny, int(round(extent / sy))) - ny
    return (px // 2, px - px // 2), (py // 2, py - py // 2)


def square_pad(arr: np.ndarray, spacing: tuple, fill: float) -> np.ndarray:
    """Pad ``(Z, H, W)`` symmetrically so both in-plane axes cover the same extent in mm."""
    wx, wy = square_widths(arr.shape[1:], spacing)
    if not any(wx + wy):
        return arr
    return np.pad(arr, ((0, 0), wx, wy), constant_values=fill)


def resize_inplane(arr: np.ndarray, size: int, mask: bool) -> np.ndarray:
    """``(Z, H, W)`` -> ``(Z, size, size)``: antialiased bilinear for images, nearest for masks."""
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


def extent(where: np.ndarray, axis: int, min_fraction: float = 0.0) -> tuple | None:
    """``(first, last + 1)`` of the indices along ``axis`` whose planes hold more than ``min_fraction``
    of ``where`` (any voxel at 0; a fraction keeps stray noise voxels from widening it); None when empty."""
    frac = np.mean(where, axis=tuple(a for a in range(where.ndim) if a != axis))
    hit = np.flatnonzero(frac > min_fraction)
    return (int(hit[0]), int(hit[-1]) + 1) if hit.size else None


def window(n: int, size: int, span: tuple | None = None) -> int:
    """Start of the ``size`` window along an axis of length ``n`` (negative: that much padding before).

    Centred on the axis, or on ``span`` (first, end) when given, kept inside the axis."""
    if n <= size or span is None:
        return (n - size) // 2
    centre = (span[0] + span[1]) / 2.0
    return int(min(max(int(round(centre - size / 2.0)), 0), n - size))


def place(arr: np.ndarray, starts: dict, size: int, fill) -> np.ndarray:
    """Crop or pad the axes in ``starts`` to ``size``, the window beginning at ``starts[axis]``."""
    if all(s == 0 and arr.shape[a] == size for a, s in starts.items()):
        return arr
    shape = [size if a in starts else n for a, n in enumerate(arr.shape)]
    out = np.full(shape, fill, dtype=arr.dtype)
    src, dst = [slice(None)] * arr.ndim, [slice(None)] * arr.ndim
    for a, s in starts.items():
        lo, hi = max(s, 0), min(s + size, arr.shape[a])
        src[a], dst[a] = slice(lo, hi), slice(lo - s, hi - s)
    out[tuple(dst)] = arr[tuple(src)]
    return out
