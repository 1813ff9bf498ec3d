"""Random edits: draw parameters with a ``numpy.random.Generator``, then run the deterministic op.

A random edit is a deterministic edit plus its drawn parameters: ``RandomEdit`` returns
``(labels, params)`` and ``OPS[op](labels, spacing, **params)`` reproduces the array exactly.

Parameter specs (values of ``ranges``):

* a scalar (or any non-range value) — fixed;
* ``[low, high]`` for a numeric parameter (``mm``, ``factor``, ``volume_factor``,
  ``volume_mm3``, ``tol``) — uniform draw, rounded to 4 decimals;
* ``{uniform: [low, high]}``, ``{randint: [low, high]}`` (inclusive), ``{choice: [a, b, ...]}``;
* ``seed_point: random`` (``grow_lesion``) — a uniformly drawn free host voxel, preferring
  voxels at least ``mm`` (or the radius of a ``volume_mm3`` ball) from the host border.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
from scipy import ndimage

from mrgen.morph.core import MorphError, as_spacing, check_labels, growable, label_set
from mrgen.morph.ops import NUMERIC_PARAMS, OPS

DECIMALS = 4


def op_params(op: str) -> tuple[list, list]:
    """(required, optional) keyword parameters of an op, without labels/spacing/info."""
    if op not in OPS:
        raise MorphError(f"unknown op '{op}'; known ops: {', '.join(sorted(OPS))}")
    sig = inspect.signature(OPS[op])
    names = [p for p in sig.parameters.values() if p.name not in ("labels", "spacing", "info")]
    required = [p.name for p in names if p.default is inspect.Parameter.empty]
    optional = [p.name for p in names if p.default is not inspect.Parameter.empty]
    return required, optional


def is_range(name: str, value) -> bool:
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("uniform", "randint", "choice"):
        return True
    if name == "seed_point" and value == "random":
        return True
    return (name in NUMERIC_PARAMS and isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def draw_value(name: str, spec, rng: np.random.Generator):
    """Draw one value for parameter ``name`` from ``spec`` (not ``seed_point: random``)."""
    if isinstance(spec, dict):
        kind, arg = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(arg, (list, tuple)) or not arg:
                raise MorphError(f"{name}: choice needs a non-empty list, got {arg!r}")
            return arg[int(rng.integers(len(arg)))]
        lo, hi = _pair(name, arg)
        if kind == "randint":
            return int(rng.integers(int(lo), int(hi) + 1))
        return round(float(rng.uniform(lo, hi)), DECIMALS)
    lo, hi = _pair(name, spec)
    return round(float(rng.uniform(lo, hi)), DECIMALS)


def _pair(name, arg):
    if not (isinstance(arg, (list, tuple)) and len(arg) == 2):
        raise MorphError(f"{name}: a range must be [low, high], got {arg!r}")
    lo, hi = float(arg[0]), float(arg[1])
    if hi < lo:
        raise MorphError(f"{name}: range [{lo}, {hi}] has low > high")
    return lo, hi


def random_seed_point(labels, spacing, params: dict, rng: np.random.Generator) -> list:
    """A free host voxel for ``grow_lesion``, deep enough for the lesion when possible."""
    arr = check_labels(labels)
    sp = as_spacing(spacing, arr.ndim)
    hosts = label_set(params.get("host_label"))
    box = hosts if params.get("container") is None else tuple(h for h in hosts if h in label_set(params["container"]))
    ok = growable(arr, int(params["lesion_label"]), params.get("protected", ()), box)
    if not ok.any():
        raise MorphError(f"grow_lesion: no free voxel of host {list(hosts)} to seed a lesion in")
    if params.get("mm") is not None:
        radius = float(params["mm"])
    else:
        radius = (3.0 * float(params.get("volume_mm3") or 0.0) / (4.0 * np.pi)) ** (1.0 / 3.0)
        if arr.ndim == 2:
            radius = np.sqrt(float(params.get("volume_mm3") or 0.0) / np.pi)
    depth = ndimage.distance_transform_edt(ok, sampling=sp)
    pool = np.flatnonzero(depth >= radius) if (depth >= radius).any() else np.flatnonzero(depth >= depth.max())
    flat = int(pool[int(rng.integers(len(pool)))])
    return [int(i) for i in np.unravel_index(flat, arr.shape)]


class RandomEdit:
    """``RandomEdit("dilate", {"label": 1, "mm": [1, 3]})(labels, spacing, rng) -> (labels, params)``."""

    def __init__(self, op: str | Callable, ranges: dict):
        self.name = op if isinstance(op, str) else next((k for k, f in OPS.items() if f is op), None)
        if self.name is None:
            raise MorphError(f"RandomEdit: {op!r} is not a known op; known ops: {', '.join(sorted(OPS))}")
        required, optional = op_params(self.name)
        unknown = sorted(set(ranges) - set(required) - set(optional))
        if unknown:
            raise MorphError(f"op '{self.name}' has no parameter(s) {unknown}; its parameters: {', '.join(required + optional)}")
        self.ranges = dict(ranges)

    @property
    def op(self) -> Callable:
        return OPS[self.name]

    def draw(self, labels, spacing, rng: np.random.Generator) -> dict:
        """Concrete parameters (ranges drawn in sorted-name order, seed points last)."""
        params = {k: v for k, v in self.ranges.items() if not is_range(k, v)}
        for name in sorted(k for k, v in self.ranges.items() if is_range(k, v) and k != "seed_point"):
            params[name] = draw_value(name, self.ranges[name], rng)
        if self.ranges.get("seed_point") == "random":
            params["seed_point"] = random_seed_point(labels, spacing, params, rng)
        elif is_range("seed_point", self.ranges.get("seed_point")):
            params["seed_point"] = draw_value("seed_point", self.ranges["seed_point"], rng)
        return {k: params[k] for k in self.ranges}  # keep the recipe's order

    def __call__(self, labels, spacing, rng: np.random.Generator, info: dict | None = None):
        params = self.draw(labels, spacing, rng)
        return self.op(labels, spacing, **params, info=info), params
