"""Intensity augmentation (DualNorm/BigAug family) and domain randomisation (SynthSeg-style).

Pure numpy/scipy, dimension-agnostic (2D slices or 3D volumes). Images are float32 in
[-1, 1] on the way in and out; masks are integer label maps. Each augmenter follows TorchIO's
pattern: ``draw_*`` takes a ``numpy.random.Generator`` and returns the drawn values as a small
frozen dataclass, ``apply_*`` is deterministic given them, and the ``*_with_params`` wrapper
returns the output with its params (applying them again reproduces the output exactly).

* :func:`augment_intensity` — a source image with a strong random appearance change:
  a random monotone Bézier intensity curve (optionally inverted: contrast inversion),
  gamma, a smooth multiplicative bias field, blur or sharpening, Gaussian noise. No spatial
  change, so the mask stays valid as it is. Params: :class:`IntensityParams`.
* :func:`synthesize_from_labels` — an image drawn from a label map only (SynthSeg,
  Billot et al. 2023): an optional random affine + elastic deformation (applied to the label
  map, which is returned deformed), one random Gaussian intensity per generation label,
  blur (resolution), bias field, gamma, min-max to [-1, 1]. ``background_classes > 0`` splits
  the background into intensity bins of the source image so the generator sees some
  anatomy besides the annotated labels (an option; the benchmark default is labels only).
  Params: :class:`RandomiseParams`.
* :func:`match_to_reference` — histogram matching of a source image's foreground to pooled
  target voxels (``skimage.exposure.match_histograms``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

BG_EPS = 1e-3


def _to01(img: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(img, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def _renorm(x: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Percentile-clip to [-1, 1] (the curate stage's ``mr`` normalisation)."""
    lo, hi = np.percentile(x, [lo_pct, hi_pct])
    if hi - lo < 1e-6:
        return np.zeros_like(x, dtype=np.float32)
    return (np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def _checked(params: dict, defaults: dict, name: str) -> dict:
    bad = set(params) - set(defaults)
    if bad:
        raise ValueError(f"{name}: unknown parameter(s) {sorted(bad)}; known: {', '.join(defaults)}")
    return {**defaults, **params}


def _upsample(coarse: np.ndarray, shape: tuple) -> np.ndarray:
    """A coarse grid zoomed (cubic) to ``shape``, edge-padded where the zoom rounds short."""
    g = ndi.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=3, mode="nearest", grid_mode=True)
    g = g[tuple(slice(0, s) for s in shape)]
    if g.shape != tuple(shape):
        g = np.pad(g, [(0, s - gs) for s, gs in zip(shape, g.shape)], mode="edge")
    return g


def bezier_curve(cx, cy, n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The monotone cubic Bézier from (0, 0) to (1, 1) with inner control points ``(cx[i], cy[i])``
    (``cx`` sorted): ``n`` samples ``(xs, ys)`` for ``np.interp``."""
    t = np.linspace(0, 1, n)
    b = np.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3])
    xs = b[1] * cx[0] + b[2] * cx[1] + b[3]
    ys = b[1] * cy[0] + b[2] * cy[1] + b[3]
    return np.maximum.accumulate(xs), ys


def draw_bias(rng: np.random.Generator, shape: tuple, strength: float = 0.3, grid: int = 4) -> np.ndarray:
    """The coarse log-field of a bias field: Gaussian, ``min(grid, s)`` points per axis."""
    return rng.normal(0.0, strength, size=tuple(min(grid, s) for s in shape))


def bias_field(coarse: np.ndarray, shape: tuple) -> np.ndarray:
    """Smooth multiplicative field ``exp(g)`` (float32 ``shape``), ``g`` the coarse grid upsampled (cubic)."""
    return np.exp(_upsample(coarse, shape)).astype(np.float32)


# ----------------------------------------------------------------------------- intensity augmentation

INTENSITY_DEFAULTS = {
    "p_curve": 0.8, "p_invert": 0.3, "gamma": [0.5, 2.0], "p_gamma": 0.5, "bias": 0.3, "p_bias": 0.5,
    "blur": [0.3, 1.2], "p_blur": 0.3, "p_sharpen": 0.15, "noise": [0.0, 0.06], "p_noise": 0.5,
}


@dataclass(frozen=True)
class IntensityParams:
    """One drawn intensity augmentation; ``None`` = that step is skipped.

    ``curve``: Bézier control points ``(cx, cy)`` (two each); ``gamma``: the exponent; ``bias``: the
    coarse log-field (:func:`bias_field`); ``blur`` / ``sharpen``: Gaussian sigma / unsharp amount
    (at most one is set); ``noise``: the additive float32 field, the image's shape; ``background``:
    the value painted on the constant background after renormalisation.
    """

    curve: tuple | None
    invert: bool
    gamma: float | None
    bias: np.ndarray | None
    blur: float | None
    sharpen: float | None
    noise: np.ndarray | None
    background: float | None


def draw_intensity_params(rng: np.random.Generator, shape: tuple, background_fraction: float = 0.0,
                          **params) -> IntensityParams:
    """Draw one augmentation for an image of ``shape`` (2D or 3D) whose constant background covers
    ``background_fraction`` of it. ``params`` override :data:`INTENSITY_DEFAULTS`.

    The draws come in the order the steps apply, each coin before its value, so a seeded ``rng``
    gives the same stream, and the same images, as the former one-pass implementation.
    """
    p = _checked(params, INTENSITY_DEFAULTS, "intensity_aug")
    curve = (np.sort(rng.uniform(0, 1, 2)), rng.uniform(0, 1, 2)) if rng.random() < p["p_curve"] else None
    invert = bool(rng.random() < p["p_invert"])
    lo, hi = p["gamma"]
    gamma = np.exp(rng.uniform(np.log(lo), np.log(hi))) if rng.random() < p["p_gamma"] else None
    bias = draw_bias(rng, tuple(shape), p["bias"]) if rng.random() < p["p_bias"] else None
    blur = sharpen = None
    if rng.random() < p["p_blur"]:
        blur = rng.uniform(*p["blur"])
    elif rng.random() < p["p_sharpen"]:
        sharpen = rng.uniform(0.3, 1.0)
    noise = rng.normal(0.0, rng.uniform(*p["noise"]), tuple(shape)).astype(np.float32) if rng.random() < p["p_noise"] else None
    # half the draws of an image with a real constant background keep it flat at a random value
    background = rng.uniform(-1.0, 1.0) if background_fraction > 0.05 and rng.random() < 0.5 else None
    return IntensityParams(curve, invert, gamma, bias, blur, sharpen, noise, background)


def _background(img: np.ndarray) -> np.ndarray:
    return _to01(img) <= BG_EPS  # the constant background of skull-stripped/padded images


def apply_intensity(img: np.ndarray, params: IntensityParams) -> np.ndarray:
    """``img`` (float32 [-1, 1], any shape) with the drawn ``params`` applied; deterministic."""
    if params.noise is not None and params.noise.shape != np.shape(img):
        raise ValueError(f"intensity params were drawn for shape {params.noise.shape}, not {np.shape(img)}; draw them for this image")
    x = _to01(img)
    bg = _background(img)
    if params.curve is not None:
        xs, ys = bezier_curve(*params.curve)
        x = np.interp(x, xs, ys).astype(np.float32)
    if params.invert:
        x = 1.0 - x
    if params.gamma is not None:
        x = np.power(np.clip(x, 0, 1), params.gamma).astype(np.float32)
    if params.bias is not None:
        x = x * bias_field(params.bias, x.shape)
    if params.blur is not None:
        x = ndi.gaussian_filter(x, params.blur)
    elif params.sharpen is not None:
        x = x + params.sharpen * (x - ndi.gaussian_filter(x, 1.0))
    if params.noise is not None:
        x = x + params.noise
    out = _renorm(x)
    if params.background is not None:
        out[bg] = params.background
    return out


def augment_intensity_with_params(img: np.ndarray, rng: np.random.Generator, **params) -> tuple[np.ndarray, IntensityParams]:
    """One strong random intensity/contrast draw of ``img`` (float32 [-1, 1] in and out) and its params."""
    drawn = draw_intensity_params(rng, np.shape(img), float(_background(img).mean()), **params)
    return apply_intensity(img, drawn), drawn


def augment_intensity(img: np.ndarray, rng: np.random.Generator, **params) -> np.ndarray:
    """:func:`augment_intensity_with_params` without the params (the bench's ``intensity_aug``)."""
    return augment_intensity_with_params(img, rng, **params)[0]


def intensity_copies(images: list, copies: int, rng: np.random.Generator, **params) -> list[list]:
    """``copies`` draws of :func:`augment_intensity` per image, in image order (``[[copies of image 0], ...]``);
    the masks stay valid as they are. The ``intensity_aug`` baseline and ``segment.engine_set=source+aug``."""
    return [[augment_intensity(img, rng, **params) for _ in range(int(copies))] for img in images]


# ----------------------------------------------------------------------------- domain randomisation

RANDOMISE_DEFAULTS = {
    "deform": True, "rotate": 10.0, "scale": [0.9, 1.1], "elastic": 0.02, "elastic_grid": 5,
    "mean": [0.0, 1.0], "std": [0.0, 0.08], "blur": [0.3, 1.0], "bias": 0.3, "gamma_sd": 0.25,
    "background_classes": 0,
}


@dataclass(frozen=True)
class DeformationParams:
    """An in-plane rotation ``theta`` (radians) and ``scale``, plus one coarse displacement grid per
    axis (voxels; empty without an elastic part)."""

    theta: float
    scale: float
    displacement: tuple = ()


def draw_deformation(rng: np.random.Generator, shape: tuple, rotate: float, scale, elastic: float,
                     grid: int) -> DeformationParams:
    """Rotation in ±``rotate`` degrees, scale in ``scale``; ``elastic``: standard deviation of the
    displacement on a coarse ``grid``, as a fraction of the in-plane size (0.02 at 64 px = 1.3 px)."""
    theta = np.deg2rad(rng.uniform(-rotate, rotate))
    s = rng.uniform(*scale)
    sd = elastic * max(shape[-2:])
    disp = tuple(rng.normal(0.0, sd, size=tuple(min(grid, n) for n in shape)) for _ in shape) if elastic > 0 else ()
    return DeformationParams(float(theta), float(s), disp)


def deformation_coords(shape: tuple, params: DeformationParams) -> np.ndarray:
    """Sampling coordinates ``(ndim, *shape)`` for ``ndi.map_coordinates``: the rotation and scale act
    on the last two axes (the in-plane ``(x, y)`` of a slice or of a ``(Z, X, Y)`` volume) about the
    centre, then each displacement grid is upsampled smoothly (cubic) and added."""
    ndim = len(shape)
    centre = (np.array(shape, np.float64) - 1) / 2
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    coords = np.stack([g - c for g, c in zip(grids, centre)])
    a, b = coords[-2].copy(), coords[-1].copy()
    coords[-2] = (np.cos(params.theta) * a - np.sin(params.theta) * b) / params.scale
    coords[-1] = (np.sin(params.theta) * a + np.cos(params.theta) * b) / params.scale
    for d, coarse in enumerate(params.displacement):
        coords[d] += _upsample(coarse, shape)
    return coords + centre.reshape((ndim,) + (1,) * ndim)


def background_bins(img: np.ndarray, mask: np.ndarray, k: int, first_label: int = 100) -> np.ndarray:
    """Generation labels: ``mask`` with its background split into ``k`` intensity quantile bins of ``img``."""
    gen = np.asarray(mask, np.int64).copy()
    bgv = (mask == 0)
    if k <= 0 or not bgv.any():
        return gen
    smooth = ndi.median_filter(np.asarray(img, np.float32), size=3)
    edges = np.quantile(smooth[bgv], np.linspace(0, 1, k + 1)[1:-1])
    gen[bgv] = first_label + np.digitize(smooth[bgv], edges)
    return gen


@dataclass(frozen=True)
class AppearanceParams:
    """Per generation label (``labels``, sorted): a Gaussian ``means`` / ``stds``; the unit-normal
    ``noise`` field (float64, the map's shape); ``blur`` sigma; ``bias`` coarse log-field or None;
    the ``gamma`` exponent applied after min-max scaling."""

    labels: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    noise: np.ndarray
    blur: float
    bias: np.ndarray | None
    gamma: float


@dataclass(frozen=True)
class RandomiseParams:
    """One domain-randomisation draw: the (fixed) ``background_classes``, the deformation (None
    without ``deform``) and the appearance."""

    background_classes: int
    deformation: DeformationParams | None
    appearance: AppearanceParams


def _deformed_labels(mask: np.ndarray, image, k: int, deformation) -> tuple[np.ndarray, np.ndarray]:
    """``(generation labels, returned mask)`` after the deformation (if any)."""
    mask = np.asarray(mask, np.int64)
    if k > 0 and image is None:
        raise ValueError("domain_randomisation: background_classes > 0 needs the source image")
    gen = background_bins(image, mask, k) if k > 0 else mask
    if deformation is not None:
        gen = ndi.map_coordinates(gen, deformation_coords(mask.shape, deformation), order=0, mode="nearest")
        mask = np.where(gen >= 100, 0, gen) if k > 0 else gen
    return gen, mask


def _draw_randomise(rng: np.random.Generator, mask: np.ndarray, image, params: dict):
    p = _checked(params, RANDOMISE_DEFAULTS, "domain_randomisation")
    k = int(p["background_classes"])
    deformation = None
    if p["deform"]:
        deformation = draw_deformation(rng, np.shape(mask), float(p["rotate"]), p["scale"], float(p["elastic"]), int(p["elastic_grid"]))
    gen, mask = _deformed_labels(mask, image, k, deformation)
    # the appearance is drawn per label of the deformed map: a label the warp removed gets no draw
    labels = np.unique(gen)
    means = rng.uniform(*p["mean"], size=len(labels))
    stds = rng.uniform(*p["std"], size=len(labels))
    noise = rng.standard_normal(gen.shape)
    blur = rng.uniform(*p["blur"])
    bias = draw_bias(rng, gen.shape, float(p["bias"])) if p["bias"] > 0 else None
    gamma = np.exp(rng.normal(0.0, float(p["gamma_sd"])))
    return RandomiseParams(k, deformation, AppearanceParams(labels, means, stds, noise, blur, bias, gamma)), gen, mask


def draw_randomise_params(rng: np.random.Generator, mask: np.ndarray, image: np.ndarray | None = None,
                          **params) -> RandomiseParams:
    """Draw one SynthSeg-style generation for label map ``mask`` (2D or 3D); ``params`` override
    :data:`RANDOMISE_DEFAULTS`. The appearance depends on the labels left after the deformation,
    so the draw deforms the map (``image`` is needed for ``background_classes > 0``)."""
    return _draw_randomise(rng, mask, image, params)[0]


def _appearance(gen: np.ndarray, a: AppearanceParams) -> np.ndarray:
    if not np.array_equal(np.unique(gen), a.labels) or a.noise.shape != gen.shape:
        raise ValueError("domain_randomisation params were drawn for another label map; draw them for this mask")
    lut_idx = np.searchsorted(a.labels, gen)
    x = (a.means[lut_idx] + a.stds[lut_idx] * a.noise).astype(np.float32)
    x = ndi.gaussian_filter(x, a.blur)
    if a.bias is not None:
        x = x * bias_field(a.bias, x.shape)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi - lo > 1e-6 else np.zeros_like(x)
    x = np.power(x, a.gamma)
    return (x * 2.0 - 1.0).astype(np.float32)


def apply_randomise(mask: np.ndarray, params: RandomiseParams, image: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(image in [-1, 1], label map)`` of the drawn ``params`` on ``mask``; deterministic."""
    gen, out = _deformed_labels(mask, image, params.background_classes, params.deformation)
    return _appearance(gen, params.appearance), out.astype(np.int64)


def synthesize_from_labels_with_params(mask: np.ndarray, rng: np.random.Generator, image: np.ndarray | None = None,
                                       **params) -> tuple[np.ndarray, np.ndarray, RandomiseParams]:
    """One SynthSeg-style draw: ``(image in [-1, 1], label map, params)``; the label map is deformed like the image."""
    drawn, gen, mask = _draw_randomise(rng, mask, image, params)
    return _appearance(gen, drawn.appearance), mask.astype(np.int64), drawn


def synthesize_from_labels(mask: np.ndarray, rng: np.random.Generator, image: np.ndarray | None = None,
                           **params) -> tuple[np.ndarray, np.ndarray]:
    """:func:`synthesize_from_labels_with_params` without the params."""
    return synthesize_from_labels_with_params(mask, rng, image, **params)[:2]


def label_copies(masks: list, copies: int, rng: np.random.Generator, context=(), images: list | None = None,
                 **params) -> tuple[list, list]:
    """``copies`` SynthSeg-style draws of each label map in ``masks``, in order (mask by mask, copy by copy):
    ``(images, label maps)``. The ``context`` label values (conditioning-only, e.g. BraTS' brain) are drawn as
    intensity classes and then set to background in the returned maps. ``images``: the source images, read only
    when ``background_classes`` > 0. The bench's ``domain_randomisation`` and ``segment.engine_set=source+dr``."""
    from mrgen.curate.labels import strip_context

    out_i, out_m = [], []
    for i, m in enumerate(masks):
        for _ in range(int(copies)):
            x, y = synthesize_from_labels(m, rng, image=None if images is None else images[i], **params)
            out_i.append(x)
            out_m.append(strip_context(y, context))
    return out_i, out_m


# ----------------------------------------------------------------------------- histogram matching


def foreground(img: np.ndarray, exclude_background: bool = True) -> np.ndarray:
    """Voxels above the image's constant background (its minimum), or all voxels."""
    img = np.asarray(img, np.float32)
    if not exclude_background:
        return np.ones(img.shape, bool)
    fg = img > img.min() + BG_EPS
    return fg if fg.mean() > 0.01 else np.ones(img.shape, bool)


def pooled_reference(images: list, rng: np.random.Generator, max_values: int = 2_000_000,
                     exclude_background: bool = True) -> np.ndarray:
    """Foreground voxels of all ``images`` pooled (randomly subsampled to ``max_values``)."""
    vals = np.concatenate([np.asarray(im, np.float32)[foreground(im, exclude_background)].ravel() for im in images])
    if vals.size > max_values:
        vals = rng.choice(vals, max_values, replace=False)
    return vals


def match_to_reference(img: np.ndarray, reference: np.ndarray, exclude_background: bool = True) -> np.ndarray:
    """Map the foreground intensities of ``img`` (one image or a stacked volume) onto ``reference``'s distribution."""
    from skimage.exposure import match_histograms

    img = np.asarray(img, np.float32)
    fg = foreground(img, exclude_background)
    out = img.copy()
    out[fg] = match_histograms(img[fg].ravel(), np.asarray(reference, np.float32).ravel())
    if exclude_background and not fg.all():
        out[~fg] = min(float(img.min()), float(np.min(reference)))
    return np.clip(out, -1.0, 1.0).astype(np.float32)
