"""Image similarity for the audit: SSIM (all pairs, batched), MS-SSIM, cosine similarity of features.

:func:`ssim_pairs` is skimage's ``structural_similarity`` (uniform ``win``-pixel window, sample
covariance, ``data_range`` 2 for images in [-1, 1], the mean over the window positions that fit
inside the image) computed for many pairs at once with torch; the window is 7 px, or the largest
odd size that fits a smaller image (as :func:`mrgen.evaluate.metrics.ssim`). :func:`diversity_pairs`
uses MONAI's MS-SSIM (5 scales, 11-px Gaussian window) when the images are large enough for it
(:data:`MS_SSIM_MIN` px a side), else SSIM, and says which.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

K1, K2 = 0.01, 0.03
MS_SSIM_MIN = 161  # MONAI's MS-SSIM: a side must exceed (kernel 11 - 1) * 2 ** (5 scales - 1) = 160 px


def window(shape) -> int:
    return max(3, min(7, *(s if s % 2 else s - 1 for s in shape)))


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, np.float32))[:, None]


def _moments(t: torch.Tensor, win: int) -> tuple:
    """Window means and (sample) variances of ``t`` ``(N, 1, H, W)`` at the window positions inside the image."""
    u = F.avg_pool2d(t, win, stride=1)
    return u, win * win / (win * win - 1.0) * (F.avg_pool2d(t * t, win, stride=1) - u * u)


def _combine(ux, vx, uy, vy, pxy, win: int, data_range: float) -> torch.Tensor:
    vxy = win * win / (win * win - 1.0) * (pxy - ux * uy)  # sample covariance, as skimage's default
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3))


@torch.no_grad()
def ssim_pairs(a, b, data_range: float = 2.0) -> np.ndarray:
    """SSIM of ``a[i]`` with ``b[i]`` for image stacks ``(N, H, W)`` (``b`` may be one image ``(1, H, W)``)."""
    x, y = _t(a).double(), _t(b).double()
    if x.shape[2:] != y.shape[2:]:
        raise ValueError(f"ssim_pairs: image shapes differ, {tuple(x.shape[2:])} vs {tuple(y.shape[2:])}")
    win = window(x.shape[2:])
    (ux, vx), (uy, vy) = _moments(x, win), _moments(y, win)
    return _combine(ux, vx, uy, vy, F.avg_pool2d(x * y, win, stride=1), win, data_range).numpy()


@torch.no_grad()
def ssim_matrix(a, b, data_range: float = 2.0) -> np.ndarray:
    """``(len(a), len(b))`` SSIM of every image of ``a`` with every image of ``b`` (float32: within 1e-4 of
    :func:`ssim_pairs`)."""
    x, y = _t(a), _t(b)
    if not len(x) or not len(y):
        return np.zeros((len(x), len(y)))
    if x.shape[2:] != y.shape[2:]:
        raise ValueError(f"ssim_matrix: image shapes differ, {tuple(x.shape[2:])} vs {tuple(y.shape[2:])}")
    win = window(x.shape[2:])
    (ux, vx), (uy, vy) = _moments(x, win), _moments(y, win)
    rows = [_combine(ux[i:i + 1], vx[i:i + 1], uy, vy, F.avg_pool2d(x[i:i + 1] * y, win, stride=1), win, data_range)
            for i in range(len(x))]
    return torch.stack(rows).double().numpy()


def cosine_matrix(fa, fb) -> np.ndarray:
    """Cosine similarity of every row of ``fa`` with every row of ``fb``."""
    fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    fa = fa / np.maximum(np.linalg.norm(fa, axis=1, keepdims=True), 1e-12)
    fb = fb / np.maximum(np.linalg.norm(fb, axis=1, keepdims=True), 1e-12)
    return fa @ fb.T


@torch.no_grad()
def ms_ssim_pairs(a, b, data_range: float = 2.0) -> np.ndarray:
    from monai.metrics.regression import compute_ms_ssim

    return compute_ms_ssim(_t(a), _t(b), spatial_dims=2, data_range=data_range).reshape(-1).double().numpy()


def diversity_pairs(a, b) -> tuple[np.ndarray, str]:
    """Similarity of ``a[i]`` with ``b[i]``: MS-SSIM when the images are at least :data:`MS_SSIM_MIN` px a
    side, else SSIM; returns ``(values, "MS-SSIM" | "SSIM")``."""
    a = np.asarray(a, np.float32)
    if not len(a):
        return np.zeros(0), "SSIM"
    if min(a.shape[1:]) >= MS_SSIM_MIN:
        return ms_ssim_pairs(a, b), "MS-SSIM"
    return ssim_pairs(a, b), "SSIM"
