"""Segmentation and image-quality metrics.

* :func:`dice_per_label` — Dice per label on whole volumes (slices stacked back per volume, as
  the paper reports 3D Dice). A label absent from both prediction and ground truth gives NaN
  (left out of means); absent from one only gives 0.
* :func:`hd95` — MONAI ``compute_hausdorff_distance`` at a percentile (95), in mm when
  ``spacing`` is given (NaN when either side is empty).
* :func:`psnr`, :func:`ssim` — skimage, for images in [-1, 1] (``data_range=2``).
* :func:`frechet_distance`, :func:`kid` — on feature sets ``(N, D)``; with EfficientNet-Lite0
  features (:mod:`mrgen.evaluate.extractor`) they are reported as **FD-EffNetLite0** and
  **KID-EffNetLite0**, not FID/KID, whose numbers are only comparable with Inception-v3 features.
"""

from __future__ import annotations

import warnings

import numpy as np


def dice_per_label(pred: np.ndarray, gt: np.ndarray, labels) -> dict:
    """``{label: dice}`` over the whole arrays (any dimensionality)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {gt.shape}")
    out = {}
    for lab in labels:
        p, g = pred == int(lab), gt == int(lab)
        denom = int(p.sum()) + int(g.sum())
        out[int(lab)] = float("nan") if denom == 0 else 2.0 * float(np.logical_and(p, g).sum()) / denom
    return out


def hd95(pred: np.ndarray, gt: np.ndarray, label: int = 1, spacing=None, percentile: float = 95.0) -> float:
    """Percentile Hausdorff distance of one label (mm when ``spacing`` per axis is given)."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    p, g = np.asarray(pred) == label, np.asarray(gt) == label
    if not p.any() or not g.any():
        return float("nan")
    yp = torch.from_numpy(np.stack([~p, p])[None].astype(np.float32))
    yg = torch.from_numpy(np.stack([~g, g])[None].astype(np.float32))
    sp = None if spacing is None else [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = compute_hausdorff_distance(yp, yg, include_background=False, percentile=percentile, spacing=sp)
    return float(d.reshape(-1)[0])


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(np.asarray(a, np.float64), np.asarray(b, np.float64), data_range=data_range))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    win = min(7, *(s if s % 2 else s - 1 for s in a.shape))
    return float(structural_similarity(a, b, data_range=data_range, win_size=max(3, win)))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` of two feature sets (N, D)."""
    from scipy import linalg

    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance needs two (N>=2, D) sets of one D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s_a, s_b = np.atleast_2d(s_a), np.atleast_2d(s_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s_a)) * eps
        covmean = linalg.sqrtm((s_a + off) @ (s_b + off))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(max(0.0, diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean)))


def _poly_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + coef0) ** degree
    kyy = (y @ y.T / d + coef0) ** degree
    kxy = (x @ y.T / d + coef0) ** degree
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kid(feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 10, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel distance: unbiased MMD² with the polynomial kernel ``(x·y / D + 1)^3``, averaged over
    random subsets of ``min(subset_size, N_a, N_b)`` (all items once when the sets are small)."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"kid needs at least 2 items per set, got {len(a)} and {len(b)}")
    m = min(subset_size, len(a), len(b))
    if m == len(a) == len(b):
        return _poly_mmd2(a, b)
    rng = np.random.default_rng(seed)
    return float(np.mean([_poly_mmd2(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
                          for _ in range(subsets)]))
