"""Shared machinery of the label-map edits: constraints, connectivity, filling freed voxels.

Every size-changing op builds a *proposal* (the voxel set the edited class should
occupy) and hands it to :class:`Editor`, which applies the constraints in a fixed
order (documented in ``docs/morph.md``):

1. **protected** — voxels of a protected class (other than the edited one) are never
   overwritten;
2. **container** — the edited class may only gain voxels whose current label is in
   the container set (so it never leaves the union of those classes);
3. **connectivity** (``keep_components=True``) — the edited class keeps its number of
   connected components (full connectivity: 8 in 2D, 26 in 3D). Each gained voxel is
   owned by the nearest original component; gained voxels touching another
   component's voxels are dropped (no merging); each component keeps only its piece
   with the most original voxels (no splitting, no detached islands); a component the
   edit would delete keeps its deepest voxels unless ``allow_delete=True``;
4. **fill** — voxels the class gives up take the label of the nearest voxel (in mm)
   that is neither the edited class nor itself freed (``fill="nearest"``), the nearest
   voxel among a list of donor labels (``fill=[0, 4, 5]``), or a fixed label
   (``fill=0``).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

EPS = 1e-6  # mm; distances are compared with this slack so 2.0 mm means "<= 2 mm"


class MorphError(ValueError):
    """A morph edit or recipe is wrong (unknown op/label, impossible target); the message says how to fix it."""


def as_spacing(spacing, ndim: int) -> tuple:
    """Spacing (mm per axis) as a tuple of ``ndim`` positive floats (``None`` = 1 mm)."""
    if spacing is None:
        return (1.0,) * ndim
    sp = tuple(float(s) for s in np.atleast_1d(spacing))
    if len(sp) == 1:
        sp = sp * ndim
    if len(sp) != ndim or min(sp) <= 0:
        raise MorphError(f"spacing {spacing!r} must give {ndim} positive values (mm per axis) for a {ndim}D label map")
    return sp


def check_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise MorphError(f"label maps must be 2D or 3D, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise MorphError(f"label maps must hold integers, got dtype {arr.dtype}")
    return arr


def label_set(value) -> tuple:
    """``None`` -> ``()``, an int -> ``(int,)``, a list -> tuple of ints."""
    if value is None:
        return ()
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    return tuple(int(v) for v in value)


def volumes_mm3(labels: np.ndarray, spacing) -> dict:
    """``{label: volume in mm³}`` for every label present (background 0 included)."""
    arr = np.asarray(labels)
    vox = float(np.prod(as_spacing(spacing, arr.ndim)))
    values, counts = np.unique(arr, return_counts=True)
    return {int(v): round(float(c) * vox, 3) for v, c in zip(values, counts)}


def structure(ndim: int) -> np.ndarray:
    """Full connectivity (8-neighbourhood in 2D, 26 in 3D)."""
    return ndimage.generate_binary_structure(ndim, ndim)


def n_components(mask: np.ndarray) -> int:
    return int(ndimage.label(mask, structure(mask.ndim))[1])


def growable(labels: np.ndarray, label: int, protected: Iterable = (), container: Iterable | None = None) -> np.ndarray:
    """Voxels the class ``label`` may take over: not protected, inside the container."""
    prot = [p for p in label_set(protected) if p != label]
    ok = ~np.isin(labels, prot) if prot else np.ones(labels.shape, bool)
    if container is not None:
        ok &= np.isin(labels, list(label_set(container)) + [label])
    return ok & (labels != label)


def fill_freed(out: np.ndarray, freed: np.ndarray, label: int, spacing: Sequence[float], fill="nearest") -> np.ndarray:
    """Relabel ``freed`` voxels of ``out`` in place (see the module docstring for the rule)."""
    if not freed.any():
        return out
    if isinstance(fill, (int, np.integer)) and not isinstance(fill, bool):
        if int(fill) == label:
            raise MorphError(f"fill label {fill} is the edited label itself; choose another label or fill: nearest")
        out[freed] = int(fill)
        return out
    donors = ~freed & (out != label)
    if fill != "nearest":
        pool = [d for d in label_set(fill) if d != label]
        if not pool:
            raise MorphError(f"fill donor list {fill!r} must name labels other than the edited label {label}")
        donors &= np.isin(out, pool)
    if not donors.any():  # nothing to copy from: fall back to a fixed label
        out[freed] = 0 if fill == "nearest" else label_set(fill)[0]
        return out
    _, idx = ndimage.distance_transform_edt(~donors, sampling=spacing, return_indices=True)
    out[freed] = out[tuple(i[freed] for i in idx)]
    return out


def _conflicts(owner: np.ndarray) -> np.ndarray:
    """Voxels (owner > 0) with a neighbour owned by a different component."""
    fp = structure(owner.ndim)
    big = np.iinfo(owner.dtype).max
    hi = ndimage.maximum_filter(owner, footprint=fp, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(owner > 0, owner, big), footprint=fp, mode="constant", cval=big)
    return (owner > 0) & ((hi > owner) | (lo < owner))


class Editor:
    """Apply proposals for one class of one label map under the constraints.

    Distances and components are computed once, so searches (``target_volume``)
    can try many proposals cheaply.
    """

    def __init__(self, labels, spacing, label: int, *, protected=(), container=None,
                 keep_components: bool = True, allow_delete: bool = False, fill="nearest"):
        self.labels = check_labels(labels)
        self.spacing = as_spacing(spacing, self.labels.ndim)
        self.label = int(label)
        self.old = self.labels == self.label
        if not self.old.any():
            present = sorted(int(v) for v in np.unique(self.labels))
            raise MorphError(f"label {self.label} is absent from this label map (present: {present}); nothing to edit")
        self.ok = growable(self.labels, self.label, protected, container)
        self.keep_components = keep_components
        self.allow_delete = allow_delete
        self.fill = fill
        self._dist_out = self._dist_in = self._owner = None
        self.comp, self.n = ndimage.label(self.old, structure(self.labels.ndim))

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def dist_out(self) -> np.ndarray:
        """mm from each voxel to the nearest voxel of the class (0 inside)."""
        if self._dist_out is None:
            self._dist_out = ndimage.distance_transform_edt(~self.old, sampling=self.spacing)
        return self._dist_out

    @property
    def dist_in(self) -> np.ndarray:
        """mm from each class voxel to the nearest other voxel (0 outside)."""
        if self._dist_in is None:
            self._dist_in = ndimage.distance_transform_edt(self.old, sampling=self.spacing)
        return self._dist_in

    @property
    def owner(self) -> np.ndarray:
        """Index (1..n) of the nearest original component, for every voxel."""
        if self._owner is None:
            if self.n == 1:
                self._owner = np.ones(self.labels.shape, np.int32)
            else:
                _, idx = ndimage.distance_transform_edt(~self.old, sampling=self.spacing, return_indices=True)
                self._owner = self.comp[tuple(idx)].astype(np.int32)
        return self._owner

    def mask(self, proposal: np.ndarray) -> np.ndarray:
        """The class's new voxel set for ``proposal`` after protected/container/connectivity."""
        proposal = np.asarray(proposal, bool)
        new = (self.old & proposal) | (proposal & self.ok)
        if self.keep_components:
            new = self._keep_components(new)
        return new

    def apply(self, proposal: np.ndarray) -> np.ndarray:
        """New label map with the class moved to ``mask(proposal)`` and freed voxels filled."""
        new = self.mask(proposal)
        out = self.labels.copy()
        out[new & ~self.old] = self.label
        return fill_freed(out, self.old & ~new, self.label, self.spacing, self.fill)

    def _keep_components(self, new: np.ndarray) -> np.ndarray:
        new = new.copy()
        gained = new & ~self.old
        owner = np.where(new, self.owner, 0).astype(np.int32)
        for _ in range(self.n + 1):
            drop = _conflicts(owner) & gained if self.n > 1 else np.zeros_like(gained)
            new &= ~drop
            gained &= ~drop
            owner[drop] = 0
            if self.allow_delete:
                break
            present = np.bincount(owner.ravel(), minlength=self.n + 1) > 0
            missing = [k for k in range(1, self.n + 1) if not present[k]]
            if not missing:
                break
            for k in missing:  # restore the deepest voxels of a component the edit would delete
                ck = self.comp == k
                keep = ck & (self.dist_in >= self.dist_in[ck].max() - EPS)
                new |= keep
                owner[keep] = k
        pieces, npieces = ndimage.label(new, structure(new.ndim))
        if npieces == 0:
            return new
        size = np.bincount(pieces.ravel(), minlength=npieces + 1)
        orig = np.bincount(pieces[self.old & new], minlength=npieces + 1)
        piece_owner = np.zeros(npieces + 1, np.int64)
        piece_owner[pieces[new]] = owner[new]
        ids = np.arange(1, npieces + 1)
        # per owner, the piece with the most original voxels (ties: the larger one)
        order = np.lexsort((size[ids], orig[ids], piece_owner[ids]))
        sorted_ids = ids[order]
        last = np.r_[piece_owner[sorted_ids][1:] != piece_owner[sorted_ids][:-1], True]
        keep_ids = sorted_ids[last]
        return np.isin(pieces, keep_ids)
