"""Intensity augmentation (DualNorm/BigAug family) and domain randomisation (SynthSeg-style).

Pure numpy/scipy, dimension-agnostic (2D slices or 3D volumes), every draw from a
``numpy.random.Generator`` so a seed reproduces the set exactly. Images are float32 in
[-1, 1] on the way in and out; masks are integer label maps.

* :func:`augment_intensity` — a source image with a strong random appearance change:
  a random monotone Bézier intensity curve (optionally inverted: contrast inversion),
  gamma, a smooth multiplicative bias field, blur or sharpening, Gaussian noise. No spatial
  change, so the mask stays valid as it is.
* :func:`synthesize_from_labels` — an image drawn from a label map only (SynthSeg,
  Billot et al. 2023): an optional random affine + elastic deformation (applied to the label
  map, which is returned deformed), one random Gaussian intensity per generation label,
  blur (resolution), bias field, gamma, min-max to [-1, 1]. ``background_classes > 0`` splits
  the background into intensity bins of the source image so the generator sees some
  anatomy besides the annotated labels (an option; the benchmark default is labels only).
* :func:`match_to_reference` — histogram matching of a source image's foreground to pooled
  target voxels (``skimage.exposure.match_histograms``).
"""

from __future__ import annotations

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


def bezier_curve(rng: np.random.Generator, n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A random monotone cubic Bézier from (0, 0) to (1, 1): control x sorted, control y free."""
    cx = np.sort(rng.uniform(0, 1, 2))
    cy = rng.uniform(0, 1, 2)
    t = np.linspace(0, 1, n)
    b = np.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3])
    xs = b[1] * cx[0] + b[2] * cx[1] + b[3]
    ys = b[1] * cy[0] + b[2] * cy[1] + b[3]
    return np.maximum.accumulate(xs), ys


def bias_field(shape: tuple, rng: np.random.Generator, strength: float = 0.3, grid: int = 4) -> np.ndarray:
    """Smooth multiplicative field ``exp(g)``: a coarse Gaussian grid upsampled (cubic) to ``shape``."""
    coarse = rng.normal(0.0, strength, size=tuple(min(grid, s) for s in shape))
    zoom = [s / c for s, c in zip(shape, coarse.shape)]
    g = ndi.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)
    g = g[tuple(slice(0, s) for s in shape)]
    if g.shape != tuple(shape):  # rounding: pad by edge values
        g = np.pad(g, [(0, s - gs) for s, gs in zip(shape, g.shape)], mode="edge")
    return np.exp(g).astype(np.float32)


INTENSITY_DEFAULTS = {
    "p_curve": 0.8, "p_invert": 0.3, "gamma": [0.5, 2.0], "p_gamma": 0.5, "bias": 0.3, "p_bias": 0.5,
    "blur": [0.3, 1.2], "p_blur": 0.3, "p_sharpen": 0.15, "noise": [0.0, 0.06], "p_noise": 0.5,
}


def augment_intensity(img: np.ndarray, rng: np.random.Generator, **params) -> np.ndarray:
    """One strong random intensity/contrast draw of ``img`` (float32 [-1, 1] in and out)."""
    p = {**INTENSITY_DEFAULTS, **params}
    bad = set(params) - set(INTENSITY_DEFAULTS)
    if bad:
        raise ValueError(f"intensity_aug: unknown parameter(s) {sorted(bad)}; known: {', '.join(INTENSITY_DEFAULTS)}")
    x = _to01(img)
    bg = x <= BG_EPS  # the constant background of skull-stripped/padded images stays background
    if rng.random() < p["p_curve"]:
        xs, ys = bezier_curve(rng)
        x = np.interp(x, xs, ys).astype(np.float32)
    if rng.random() < p["p_invert"]:
        x = 1.0 - x
    if rng.random() < p["p_gamma"]:
        lo, hi = p["gamma"]
        x = np.power(np.clip(x, 0, 1), np.exp(rng.uniform(np.log(lo), np.log(hi)))).astype(np.float32)
    if rng.random() < p["p_bias"]:
        x = x * bias_field(x.shape, rng, p["bias"])
    if rng.random() < p["p_blur"]:
        x = ndi.gaussian_filter(x, rng.uniform(*p["blur"]))
    elif rng.random() < p["p_sharpen"]:
        blurred = ndi.gaussian_filter(x, 1.0)
        x = x + rng.uniform(0.3, 1.0) * (x - blurred)
    if rng.random() < p["p_noise"]:
        x = x + rng.normal(0.0, rng.uniform(*p["noise"]), x.shape).astype(np.float32)
    out = _renorm(x)
    if bg.mean() > 0.05 and rng.random() < 0.5:  # half the draws keep a flat (random-valued) background
        out[bg] = rng.uniform(-1.0, 1.0)
    return out


# ----------------------------------------------------------------------------- domain randomisation

RANDOMISE_DEFAULTS = {
    "deform": True, "rotate": 10.0, "scale": [0.9, 1.1], "elastic": 0.02, "elastic_grid": 5,
    "mean": [0.0, 1.0], "std": [0.0, 0.08], "blur": [0.3, 1.0], "bias": 0.3, "gamma_sd": 0.25,
    "background_classes": 0,
}


def random_deformation(shape: tuple, rng: np.random.Generator, rotate: float, scale, elastic: float, grid: int) -> np.ndarray:
    """Sampling coordinates ``(ndim, *shape)`` for a random affine (in-plane rotation, scale) + elastic warp.

    The rotation acts on the last two axes (the in-plane ``(x, y)`` of a slice or of a ``(Z, X, Y)`` volume).
    ``elastic``: standard deviation of the displacement on a coarse ``grid``, as a fraction of the
    in-plane size (0.02 at 64 px = 1.3 px), upsampled smoothly (cubic).
    """
    ndim = len(shape)
    centre = (np.array(shape, np.float64) - 1) / 2
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    coords = np.stack([g - c for g, c in zip(grids, centre)])
    theta = np.deg2rad(rng.uniform(-rotate, rotate))
    s = rng.uniform(*scale)
    a, b = coords[-2].copy(), coords[-1].copy()
    coords[-2] = (np.cos(theta) * a - np.sin(theta) * b) / s
    coords[-1] = (np.sin(theta) * a + np.cos(theta) * b) / s
    if elastic > 0:
        for d in range(ndim):
            coarse = rng.normal(0.0, elastic * max(shape[-2:]), size=tuple(min(grid, n) for n in shape))
            disp = ndi.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=3, mode="nearest", grid_mode=True)
            disp = disp[tuple(slice(0, n) for n in shape)]
            if disp.shape != tuple(shape):
                disp = np.pad(disp, [(0, n - m) for n, m in zip(shape, disp.shape)], mode="edge")
            coords[d] += disp
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


def synthesize_from_labels(mask: np.ndarray, rng: np.random.Generator, image: np.ndarray | None = None,
                           **params) -> tuple[np.ndarray, np.ndarray]:
    """One SynthSeg-style draw: ``(image in [-1, 1], label map)`` — the label map deformed like the image."""
    p = {**RANDOMISE_DEFAULTS, **params}
    bad = set(params) - set(RANDOMISE_DEFAULTS)
    if bad:
        raise ValueError(f"domain_randomisation: unknown parameter(s) {sorted(bad)}; known: {', '.join(RANDOMISE_DEFAULTS)}")
    mask = np.asarray(mask, np.int64)
    k = int(p["background_classes"])
    if k > 0 and image is None:
        raise ValueError("domain_randomisation: background_classes > 0 needs the source image")
    gen = background_bins(image, mask, k) if k > 0 else mask
    if p["deform"]:
        coords = random_deformation(mask.shape, rng, float(p["rotate"]), p["scale"], float(p["elastic"]), int(p["elastic_grid"]))
        gen = ndi.map_coordinates(gen, coords, order=0, mode="nearest")
        mask = np.where(gen >= 100, 0, gen) if k > 0 else gen
    labels = np.unique(gen)
    means = rng.uniform(*p["mean"], size=len(labels))
    stds = rng.uniform(*p["std"], size=len(labels))
    lut_idx = np.searchsorted(labels, gen)
    x = (means[lut_idx] + stds[lut_idx] * rng.standard_normal(gen.shape)).astype(np.float32)
    x = ndi.gaussian_filter(x, rng.uniform(*p["blur"]))
    if p["bias"] > 0:
        x = x * bias_field(x.shape, rng, float(p["bias"]))
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi - lo > 1e-6 else np.zeros_like(x)
    x = np.power(x, np.exp(rng.normal(0.0, float(p["gamma_sd"]))))
    return (x * 2.0 - 1.0).astype(np.float32), mask.astype(np.int64)


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
