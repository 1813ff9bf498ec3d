"""Curate's geometry undone: a stored label array back on the voxel grid of its source file.

:func:`mrgen.curate.volume.process` takes a file's voxels through five steps; :func:`to_source_grid`
undoes them in reverse order, reading only the volume's record (``curated/curate.json``
``volumes.<key>``):

1. canonical RAS+ (``nibabel.as_closest_canonical``)  ->  back to the file's axis order and directions
   (``source_grid.axcodes``);
2. slice axis first, in-plane axes in R, A, S order, slice order reversed when ``flipped``
   (``geometry``)  ->  :func:`mrgen.curate.geometry.unorient`;
3. in-plane: symmetric pad to a square field of view (``spacing``, ``orig_shape``)  ->  cropped off;
4. resampled to ``resampled`` px per side, nearest neighbour for masks  ->  nearest neighbour back to the
   padded plane (exact where curate did not resample: ``resampled`` equals the padded size);
5. crop or pad to ``data.image_size`` at ``start`` (3D also the slice window ``z_window``)  ->  put back
   in place, zeros (background) where curate cropped the plane away.

With the source file's affine (:func:`source_affine`, ``source_grid.affine``) the result is written as a
NIfTI that lies over its image in ITK-SNAP or 3D Slicer without resampling.
"""

from __future__ import annotations

import numpy as np

from mrgen.curate.geometry import Orientation, place, square_widths, unorient

__all__ = ["source_grid", "source_affine", "to_source_grid"]

RAS = ((0, 1), (1, 1), (2, 1))  # nibabel orientation of canonical RAS+


def _ornt(axcodes: str) -> np.ndarray:
    from nibabel.orientations import axcodes2ornt

    return axcodes2ornt(tuple(axcodes))


def source_grid(shape: tuple, affine: np.ndarray, axcodes: str) -> dict:
    """The file's own voxel grid of a volume read as canonical ``shape``/``affine`` from a file with axis codes
    ``axcodes`` (``io.Image.orientation``): ``{"shape": file voxel shape, "affine": 16 floats, "axcodes": ...}``.

    The file affine is the canonical one with ``as_closest_canonical``'s axis permutation and flips undone
    (for a DICOM series: the LPS-built affine of :func:`mrgen.io.read_image`, in RAS mm)."""
    from nibabel.orientations import inv_ornt_aff

    ornt = _ornt(axcodes)
    file_shape = tuple(int(shape[int(c)]) for c in ornt[:, 0])  # file axis i became canonical axis ornt[i, 0]
    file_affine = np.asarray(affine, dtype=np.float64) @ np.linalg.inv(inv_ornt_aff(ornt, file_shape))
    return {"shape": list(file_shape), "affine": [float(v) for v in file_affine.ravel()], "axcodes": str(axcodes)}


def _grid(record: dict) -> dict:
    grid = record.get("source_grid")
    if not grid:
        raise ValueError(f"curate record of {record.get('key', '?')} has no 'source_grid' (curated by an older mrgen); "
                         f"re-run `mrgen curate` on this run (the arrays are reused, only the record is completed)")
    return grid


def source_affine(record: dict) -> np.ndarray:
    """4x4 affine (voxel -> RAS mm) of the volume's source file, as its header gives it."""
    return np.asarray(_grid(record)["affine"], dtype=np.float64).reshape(4, 4)


def _resize_nearest(zhw: np.ndarray, hw: tuple) -> np.ndarray:
    """``(Z, h, w)`` -> ``(Z, *hw)`` by nearest neighbour (``nearest-exact``: the rule curate's forward resize
    used; the identity when the size is unchanged)."""
    import torch
    import torch.nn.functional as F

    if tuple(zhw.shape[1:]) == tuple(hw):
        return zhw
    t = torch.from_numpy(np.ascontiguousarray(zhw, dtype=np.float32))[:, None]
    with torch.no_grad():
        out = F.interpolate(t, size=tuple(int(s) for s in hw), mode="nearest-exact")
    return np.rint(out[:, 0].numpy()).astype(zhw.dtype)


def to_source_grid(pred: np.ndarray, record: dict) -> np.ndarray:
    """A label array on the curated grid -> the source file's voxel layout.

    ``pred``: int ``(Z, h, w)``, the stored shape of the volume (``record["shape"]``: slices of a 2D run
    stacked in slice order; a 3D prediction resampled back to it first). ``record``: the volume's entry of
    ``curate.json``. Returns an array of ``record["source_grid"]["shape"]`` (the file's ``(i, j, k)``), same
    dtype, background 0 where curate cropped the plane or the slice window away."""
    pred = np.asarray(pred)
    stored = tuple(int(s) for s in record["shape"])
    if pred.shape != stored:
        raise ValueError(f"{record.get('key', '?')}: prediction shape {pred.shape} is not the stored shape {stored}; "
                         f"resample it to the curated grid (nearest neighbour) before mapping it back")
    grid, geo = _grid(record), record["geometry"]
    h, w, z = (int(s) for s in record["orig_shape"])  # the source volume, oriented: (H, W, Z)
    n, (s1, s2) = int(geo["resampled"]), (int(v) for v in geo["start"])
    # 5. the size x size window sat at `start` in the n x n resampled plane: put it back there
    arr = place(pred, {1: -s1, 2: -s2}, n, 0)
    # 4./3. nearest neighbour back to the square-padded plane, then cut the padding off
    (x0, x1), (y0, y1) = square_widths((h, w), record["spacing"][:2])
    arr = _resize_nearest(arr, (h + x0 + x1, w + y0 + y1))[:, x0:x0 + h, y0:y0 + w]
    zw = geo.get("z_window")
    if zw:  # 3D: the window of source slices, starting at z_window.start (negative: curate padded)
        arr = place(arr, {0: -int(zw["start"])}, z, 0)
    # 2. stored (Z, H, W) -> canonical (X, Y, Z); 1. canonical -> the file's axes
    from nibabel.orientations import apply_orientation, ornt_transform

    canon = unorient(arr, Orientation.from_record(geo))
    out = apply_orientation(canon, ornt_transform(np.asarray(RAS), _ornt(grid["axcodes"])))
    if list(out.shape) != list(grid["shape"]):  # a record that does not describe its own arrays
        raise ValueError(f"{record.get('key', '?')}: mapped back to shape {out.shape}, but the source file is "
                         f"{tuple(grid['shape'])}; the curate record is inconsistent — re-run `mrgen curate`")
    return np.ascontiguousarray(out)
