"""Deterministic label-map edits, 2D or 3D, in millimetres.

Every op is a pure function ``op(labels, spacing, **params) -> new labels``; the input
array is never modified. ``spacing`` is mm per axis, so distances respect anisotropic
voxels (Euclidean distance transforms with ``sampling=spacing``). Growing ops obey
``protected`` / ``container`` / ``keep_components`` and shrinking ops fill freed voxels
by the ``fill`` rule; see :mod:`mrgen.morph.core`. Ops that find a value (the distance
of ``target_volume``, the achieved lesion volume) report it in the optional ``info``
dict, which the recipe record keeps.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mrgen.morph.core import EPS, Editor, MorphError, as_spacing, check_labels, fill_freed, growable, label_set, structure


def dilate(labels, spacing, label: int, mm: float, *, protected=(), container=None,
           keep_components: bool = True, info: dict | None = None) -> np.ndarray:
    """Grow class ``label`` by ``mm``: every voxel within ``mm`` (centre to centre) of it joins."""
    if mm < 0:
        raise MorphError(f"dilate: mm must be >= 0, got {mm}; use erode to shrink")
    ed = Editor(labels, spacing, label, protected=protected, container=container, keep_components=keep_components)
    return ed.apply(ed.dist_out <= mm + EPS)


def erode(labels, spacing, label: int, mm: float, *, fill="nearest", keep_components: bool = True,
          allow_delete: bool = False, info: dict | None = None) -> np.ndarray:
    """Shrink class ``label`` by ``mm``: its voxels within ``mm`` of another label are freed and filled."""
    if mm < 0:
        raise MorphError(f"erode: mm must be >= 0, got {mm}; use dilate to grow")
    ed = Editor(labels, spacing, label, keep_components=keep_components, allow_delete=allow_delete, fill=fill)
    return ed.apply(ed.old & (ed.dist_in > mm + EPS))


def scale(labels, spacing, label: int, factor: float | None = None, volume_factor: float | None = None, *,
          protected=(), container=None, fill="nearest", keep_components: bool = True,
          allow_delete: bool = False, info: dict | None = None) -> np.ndarray:
    """Scale class ``label`` about its centroid by a linear ``factor`` (volume ~ factor**ndim),
    or by ``volume_factor`` (linear factor = volume_factor ** (1/ndim)).

    The class mask is resampled (trilinear, threshold 0.5); gained voxels obey the
    constraints, freed voxels are filled.
    """
    arr = check_labels(labels)
    if (factor is None) == (volume_factor is None):
        raise MorphError("scale: give exactly one of factor (linear) or volume_factor")
    f = float(factor) if factor is not None else float(volume_factor) ** (1.0 / arr.ndim)
    if f <= 0:
        raise MorphError(f"scale: factor must be > 0, got {f}")
    ed = Editor(arr, spacing, label, protected=protected, container=container,
                keep_components=keep_components, allow_delete=allow_delete, fill=fill)
    c = np.array(ndimage.center_of_mass(ed.old))
    # output voxel i samples the class at c + (i - c) / f (same factor on every axis = isotropic in mm)
    sampled = ndimage.affine_transform(ed.old.astype(np.float32), np.full(arr.ndim, 1.0 / f),
                                       offset=c * (1.0 - 1.0 / f), order=1, mode="constant", cval=0.0)
    if info is not None:
        info["linear_factor"] = round(f, 6)
    return ed.apply(sampled >= 0.5)


def remove(labels, spacing, label: int, fill="nearest", *, info: dict | None = None) -> np.ndarray:
    """Replace class ``label`` entirely by ``fill`` (a label, ``nearest``, or a list of donor labels)."""
    arr = check_labels(labels)
    sp = as_spacing(spacing, arr.ndim)
    freed = arr == int(label)
    return fill_freed(arr.copy(), freed, int(label), sp, fill)


def remap(labels, spacing, mapping: dict, default: int | None = None, *, info: dict | None = None) -> np.ndarray:
    """Relabel with ``mapping`` ``{old: new}`` (applied simultaneously, not chained).

    Labels missing from the mapping stay as they are, or become ``default`` if given.
    """
    arr = check_labels(labels)
    if not isinstance(mapping, dict) or not mapping:
        raise MorphError("remap: mapping must be a non-empty {old_label: new_label} mapping")
    values, inverse = np.unique(arr, return_inverse=True)
    table = {int(k): int(v) for k, v in mapping.items()}
    new_values = np.array([table.get(int(v), int(v) if default is None else int(default)) for v in values])
    return new_values[inverse].reshape(arr.shape).astype(arr.dtype)


def _order(ed: Editor, grow: bool) -> tuple:
    """Candidate voxels (flat indices) in the order a growing/shrinking class takes/gives them up,
    and their distances: nearest the class border first; ties go to the voxel nearer the
    class centroid when growing (farther from it when shrinking)."""
    c = np.array(ndimage.center_of_mass(ed.old))
    to_centre = _distance_to_point(ed.labels.shape, ed.spacing, c)
    if grow:
        flat = np.flatnonzero(ed.ok)
        d = ed.dist_out.ravel()[flat]
        order = np.lexsort((to_centre.ravel()[flat], d))
    else:
        flat = np.flatnonzero(ed.old)
        d = ed.dist_in.ravel()[flat]
        order = np.lexsort((-to_centre.ravel()[flat], d))
    return flat[order], d[order]


def _search(ed: Editor, grow: bool, target: int):
    """Bisection over how many ordered candidate voxels (see ``_order``) the class takes or gives up,
    for the constrained voxel count closest to ``target``. Returns (mm, mask, count)."""
    flat, dist = _order(ed, grow)
    cache = {}

    def count(k):
        if k not in cache:
            proposal = ed.old.copy()
            proposal.ravel()[flat[:k]] = grow
            m = ed.mask(proposal)
            cache[k] = (float(dist[k - 1]) if k else 0.0, m, int(m.sum()))
        return cache[k]

    def reached(k):
        return count(k)[2] >= target if grow else count(k)[2] <= target

    lo, hi = 0, len(flat)  # invariant: lo not reached (k=0 is the unchanged class)
    if not reached(hi):
        return count(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reached(mid) else (mid, hi)
    return min((count(lo), count(hi)), key=lambda r: (abs(r[2] - target), r[0]))


def target_volume(labels, spacing, label: int, factor: float, *, tol: float = 0.05, protected=(), container=None,
                  fill="nearest", keep_components: bool = True, allow_delete: bool = False,
                  info: dict | None = None) -> np.ndarray:
    """Dilate (factor > 1) or erode (factor < 1) class ``label`` until its volume is ``factor`` × the
    original: candidate voxels are ordered by distance to the class border (mm), and the
    number taken (hence the distance, with a partial last shell) is found by bisection.

    ``info`` gets ``mm`` (the distance reached) and ``achieved_factor``. Raises
    :class:`MorphError` if the closest reachable ratio is more than ``tol`` (relative) away
    from ``factor`` (e.g. the container or protected classes leave no room).
    """
    if factor <= 0:
        raise MorphError(f"target_volume: factor must be > 0, got {factor}")
    ed = Editor(labels, spacing, label, protected=protected, container=container,
                keep_components=keep_components, allow_delete=allow_delete, fill=fill)
    v0 = int(ed.old.sum())
    target = int(round(factor * v0))
    if target == v0:
        mm, mask, n = 0.0, ed.old, v0
    else:
        mm, mask, n = _search(ed, target > v0, target)
    achieved = n / v0
    if info is not None:
        info.update(mm=round(mm, 4), op="dilate" if factor >= 1 else "erode", achieved_factor=round(achieved, 4))
    if abs(achieved / factor - 1.0) > tol:
        raise MorphError(
            f"target_volume: label {label} can get at best x{achieved:.3f} of its volume (asked x{factor:.3f}, tol {tol}); "
            "the container/protected classes or connectivity leave no room — loosen them or raise tol")
    out = ed.labels.copy()
    out[mask & ~ed.old] = ed.label
    return fill_freed(out, ed.old & ~mask, ed.label, ed.spacing, fill)


def _distance_to_point(shape, spacing, point) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return np.sqrt(sum(((g - p) * sp) ** 2 for g, p, sp in zip(grids, point, spacing)))


def grow_lesion(labels, spacing, lesion_label: int, host_label, mm: float | None = None,
                volume_mm3: float | None = None, seed_point=None, *, protected=(), container=None,
                tol: float = 0.05, info: dict | None = None) -> np.ndarray:
    """Grow class ``lesion_label`` inside the host class(es) ``host_label`` (it only takes host voxels).

    * ``seed_point`` (voxel indices) given: paste a new lesion — the host voxels within ``mm``
      of the seed, or the ``volume_mm3`` worth of host voxels nearest to it — keeping the
      piece connected to the seed (one new component; it merges if it touches an old one);
    * no ``seed_point``: grow the existing lesion by ``mm`` (dilation) or by ``volume_mm3``
      added (``target_volume`` search), keeping its components.
    """
    arr = check_labels(labels)
    sp = as_spacing(spacing, arr.ndim)
    lesion, hosts = int(lesion_label), label_set(host_label)
    if not hosts:
        raise MorphError("grow_lesion: host_label must name at least one class")
    if (mm is None) == (volume_mm3 is None):
        raise MorphError("grow_lesion: give exactly one of mm (growth distance) or volume_mm3 (volume added)")
    if (mm is not None and mm < 0) or (volume_mm3 is not None and volume_mm3 < 0):
        raise MorphError("grow_lesion: mm / volume_mm3 must be >= 0")
    box = hosts if container is None else tuple(h for h in hosts if h in label_set(container))
    vox = float(np.prod(sp))
    if seed_point is None:
        if not (arr == lesion).any():
            raise MorphError(f"grow_lesion: lesion label {lesion} is absent; give seed_point (or seed_point: random in a recipe)")
        if mm is not None:
            out = dilate(arr, sp, lesion, mm, protected=protected, container=box)
        else:
            v0 = int((arr == lesion).sum())
            out = target_volume(arr, sp, lesion, (v0 + volume_mm3 / vox) / v0, tol=tol,
                                protected=protected, container=box, info=info)
        if info is not None:
            info["added_mm3"] = round(float(((out == lesion) & (arr != lesion)).sum()) * vox, 3)
        return out
    point = tuple(int(round(float(p))) for p in seed_point)
    if len(point) != arr.ndim or any(not 0 <= p < s for p, s in zip(point, arr.shape)):
        raise MorphError(f"grow_lesion: seed_point {list(seed_point)} is not a voxel index inside shape {arr.shape}")
    ok = growable(arr, lesion, protected, box)
    if not ok[point]:
        raise MorphError(f"grow_lesion: seed_point {list(point)} has label {int(arr[point])}, not a free host voxel "
                         f"(host {list(hosts)}, protected {list(label_set(protected))})")
    d = _distance_to_point(arr.shape, sp, point)
    if mm is not None:
        blob = ok & (d <= mm + EPS)
    else:
        n = max(1, int(round(volume_mm3 / vox)))
        flat = np.flatnonzero(ok)
        nearest = flat[np.argsort(d.ravel()[flat], kind="stable")[:n]]
        blob = np.zeros(arr.shape, bool)
        blob.ravel()[nearest] = True
    pieces, _ = ndimage.label(blob, structure(arr.ndim))
    blob = pieces == pieces[point]
    out = arr.copy()
    out[blob] = lesion
    if info is not None:
        info["added_mm3"] = round(float(blob.sum()) * vox, 3)
    return out


OPS = {
    "dilate": dilate,
    "erode": erode,
    "scale": scale,
    "remove": remove,
    "remap": remap,
    "target_volume": target_volume,
    "grow_lesion": grow_lesion,
}

# parameters that name classes (recipes may use names for them)
LABEL_PARAMS = ("label", "lesion_label", "host_label", "fill", "protected", "container", "default")
# numeric parameters a recipe may give as a [low, high] range
NUMERIC_PARAMS = ("mm", "factor", "volume_factor", "volume_mm3", "tol")
