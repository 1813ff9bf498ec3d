"""Geometry on a normalised grid: smooth random fields, soft superellipsoids, a painter.

The grid covers the field of view with normalised coordinates: ``x`` and ``y`` run over
``[-1, 1]`` across the in-plane matrix (voxel centres), ``z`` over ``[-1, 1]`` across the slab.
Axes are RAS: +x = patient right, +y = anterior, +z = superior. All volumes are ``(X, Y, Z)``.

Shapes are drawn with soft (partial-volume) edges about one in-plane voxel wide, so a voxel
on an organ boundary holds a mixture of both tissues — this is what produces the dark
fat–water boundaries of opposed-phase imaging.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Grid:
    """Normalised voxel-centre coordinates, broadcastable to ``shape = (X, Y, Z)``."""

    x: np.ndarray  # (X, 1, 1)
    y: np.ndarray  # (1, Y, 1)
    z: np.ndarray  # (1, 1, Z)
    shape: tuple
    vox: float  # in-plane voxel width in normalised units (2 / X)


def make_grid(shape: tuple) -> Grid:
    """Grid for a volume of ``shape = (X, Y, Z)``."""
    nx, ny, nz = (int(s) for s in shape)

    def centres(n: int) -> np.ndarray:
        return ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0).astype(np.float32)

    return Grid(centres(nx)[:, None, None], centres(ny)[None, :, None], centres(nz)[None, None, :],
                (nx, ny, nz), 2.0 / max(nx, ny))


def smooth_field(grid: Grid, seed: int, n: int = 6, fmin: float = 0.25, fmax: float = 0.8) -> np.ndarray:
    """A smooth random field ``(X, Y, Z)`` float32, zero mean and about unit std.

    Sum of ``n`` plane waves with random directions, phases and frequencies in
    ``[fmin, fmax]`` cycles per normalised unit (the FOV is 2 units wide). Resolution
    independent: the same seed gives the same continuous field at any matrix size.
    """
    rng = np.random.default_rng(int(seed))
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    f = rng.uniform(fmin, fmax, n)[:, None] * d * (2 * np.pi)
    phase = rng.uniform(0, 2 * np.pi, n)
    # separable: cos(fx·x + fy·y + fz·z + φ) = Re(e^{i fx x} e^{i fy y} e^{i (fz z + φ)}), so
    # exponentials are taken on lines only and the volume is one (XY, n) @ (n, Z) product.
    nx, ny, nz = grid.shape
    ex = np.exp(1j * grid.x[:, 0, 0].astype(np.float64)[:, None] * f[:, 0])  # (X, n)
    ey = np.exp(1j * grid.y[0, :, 0].astype(np.float64)[:, None] * f[:, 1])  # (Y, n)
    ez = np.exp(1j * (f[:, 2, None] * grid.z[0, 0].astype(np.float64)[None, :] + phase[:, None]))  # (n, Z)
    plane = (ex[:, None, :] * ey[None, :, :]).reshape(nx * ny, n)
    out = plane.real @ ez.real - plane.imag @ ez.imag
    return (out.reshape(nx, ny, nz) * np.sqrt(2.0 / n)).astype(np.float32)


class FieldCache:
    """Smooth fields by seed, so layered shapes (body / fascia / cavity) share one deformation."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self._cache: dict = {}

    def __call__(self, seed: int, n: int = 6, fmin: float = 0.25, fmax: float = 0.8) -> np.ndarray:
        key = (int(seed), n, fmin, fmax)
        if key not in self._cache:
            self._cache[key] = smooth_field(self.grid, seed, n, fmin, fmax)
        return self._cache[key]


def blob(grid: Grid, p: dict, fields: FieldCache | None = None, grow: float = 0.0) -> np.ndarray:
    """Soft occupancy ``(X, Y, Z)`` in [0, 1] of a deformed superellipsoid (see :func:`distance`)."""
    return soft(distance(grid, p, fields, grow), grid)


def soft(dist: np.ndarray, grid: Grid) -> np.ndarray:
    """Occupancy ``clip(0.5 - dist / voxel)`` of the region ``dist < 0`` (edges one voxel wide)."""
    return np.clip(0.5 - dist * (1.0 / grid.vox), 0.0, 1.0).astype(np.float32)


def distance(grid: Grid, p: dict, fields: FieldCache | None = None, grow: float = 0.0) -> np.ndarray:
    """Approximate signed distance ``(X, Y, Z)`` (normalised units, < 0 inside) to a deformed superellipsoid.

    ``p`` (all normalised units): ``c`` centre (x, y, z); ``r`` semi-axes (a, b, c) — ``c`` is
    the half extent along z, so the cross-section shrinks to nothing at ``cz ± c`` (organs
    appear and disappear across slices); ``e`` in-plane superellipse exponent (2 = ellipse);
    ``rot`` in-plane rotation (rad); ``drift`` centre shift (dx, dy) per unit z; ``deform``
    amplitude of the low-frequency field (seed ``seed``) added to the shape's radius function.
    Optional ``freq`` (fmin, fmax) of that field and ``extra``: a list of further
    ``[amplitude, seed, fmin, fmax]`` deformations (e.g. gyri on the white-matter surface).
    ``grow`` adds to the in-plane semi-axes (negative shrinks; for nested layers).
    """
    cx, cy, cz = (float(v) for v in p["c"])
    a, b, c = (float(v) for v in p["r"])
    a, b = max(a + grow, 1e-3), max(b + grow, 1e-3)
    kx, ky = (float(v) for v in p.get("drift", (0.0, 0.0)))
    dz = (grid.z - cz) / c  # python floats keep the arrays float32
    dx = grid.x - cx - kx * (grid.z - cz)
    dy = grid.y - cy - ky * (grid.z - cz)
    th = float(p.get("rot", 0.0))
    cos, sin = float(np.cos(th)), float(np.sin(th))
    u = (cos * dx + sin * dy) / a
    v = (cos * dy - sin * dx) / b
    e = float(p.get("e", 2.0))
    if e == 2.0:
        rho2 = u * u + v * v
    else:
        rho2 = (np.abs(u) ** e + np.abs(v) ** e) ** (2.0 / e)
    rho = np.sqrt(rho2 + dz * dz)
    if fields is not None:
        if p.get("deform", 0.0):
            fmin, fmax = p.get("freq", (0.25, 0.8))
            rho = rho + float(p["deform"]) * fields(p["seed"], 6, fmin, fmax)
        for amp, seed, fmin, fmax in p.get("extra", ()):
            rho = rho + float(amp) * fields(seed, 8, fmin, fmax)
    return ((rho - 1.0) * min(a, b)).astype(np.float32)


def slab(grid: Grid, x0: float, width: float, zrange: tuple = (-9.0, 9.0)) -> np.ndarray:
    """Soft occupancy ``(X, Y, Z)`` of the plane ``|x - x0| < width / 2`` within ``zrange``."""
    occ = np.clip(0.5 - (np.abs(grid.x - x0) - width / 2) / grid.vox, 0.0, 1.0)
    zin = ((grid.z >= zrange[0]) & (grid.z <= zrange[1])).astype(np.float32)
    return np.broadcast_to(occ * zin, grid.shape).astype(np.float32)


class Canvas:
    """Painter's compositing, top layer first, keeping partial volumes.

    ``paint(occ, tissue, label)`` gives each voxel ``occ × remaining`` of ``tissue`` (and of
    ``label``), where ``remaining`` is what the layers painted earlier (on top) left free.
    ``fractions`` is ``(T, X, Y, Z)``; air is ``1 - fractions.sum(0)``.
    """

    def __init__(self, shape: tuple, tissues: tuple, n_labels: int):
        self.tissues = tuple(tissues)
        self.index = {t: i for i, t in enumerate(self.tissues)}
        self.remaining = np.ones(shape, np.float32)
        self.fractions = np.zeros((len(self.tissues),) + tuple(shape), np.float32)
        self.labels = np.zeros((n_labels + 1,) + tuple(shape), np.float32)

    def paint(self, occ: np.ndarray, tissue: str, label: int = 0) -> None:
        c = occ * self.remaining
        self.fractions[self.index[tissue]] += c
        if label:
            self.labels[label] += c
        self.remaining -= c

    def mask(self) -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8: the label with the largest volume fraction (0 = none)."""
        lab = self.labels.copy()
        lab[0] = 1.0 - lab[1:].sum(0)
        return np.argmax(lab, axis=0).astype(np.uint8)

    def tissue_map(self) -> np.ndarray:
        """Dominant tissue ``(X, Y, Z)`` uint8: 0 = air, ``i`` = ``tissues[i - 1]``."""
        stack = np.concatenate([np.clip(self.remaining, 0, 1)[None], self.fractions], axis=0)
        return np.argmax(stack, axis=0).astype(np.uint8)
