"""Prompted classical segmenters: an offline stand-in for SAM2 in the autofilter.

The prompt is what SAM2 would get, never the whole mask (a whole-mask prompt just returns
the mask): the organ's **box** plus a few **sparse seeds** drawn from the mask — points deep
inside the organ (distance to its border ≥ ``depth`` × the largest distance) and background
points outside the box dilated by a ring. The segmenter then decides where the organ's border
is *in the image*; the IoU of that segmentation with the mask measures how well the rendered
image follows the mask. Confidence is the **stability** of the answer: the mean IoU of
segmentations under perturbed prompts (other seed draws, other seed depth and ring width)
with their consensus, in [0, 1].

Methods (``method=``): ``random_walker`` (skimage), ``watershed`` (on the Sobel gradient),
``grabcut`` (GrabCut-like: iterated 1D Gaussian mixtures for organ and background, smoothed
log-likelihood ratio, kept where connected to the organ seeds) and ``region_grow`` (flood from
the seeds within an intensity tolerance). ``benchmarks/filter_auc.py`` measures which one
separates aligned from misaligned image/mask pairs best (see docs/filter.md).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage as ndi

METHODS = ("random_walker", "watershed", "grabcut", "region_grow")


def _bbox(m: np.ndarray) -> tuple:
    ys, xs = np.nonzero(m)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def make_prompt(m: np.ndarray, other: np.ndarray, box: tuple, rng: np.random.Generator, depth: float = 0.5,
                ring: int = 2, n_fg: int = 12, n_bg: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeds for one organ inside a crop: (fg, bg) boolean maps.

    ``m``: the organ's mask in the crop; ``other``: other organs' masks (their deep interior is
    background for this organ); ``box``: the organ's box in crop coordinates. ``n_bg=0`` marks
    every pixel outside the ring-dilated box as background (a box prompt); ``n_bg>0`` samples
    that many background points there instead.
    """
    edt = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    cand = edt >= max(1.0, depth * edt.max())
    fg = _sample(cand, n_fg, rng)
    y0, y1, x0, x1 = box
    outside = np.ones_like(m, dtype=bool)
    outside[max(0, y0 - ring):y1 + ring, max(0, x0 - ring):x1 + ring] = False
    if other.any():
        oedt = ndi.distance_transform_edt(np.pad(other, 1))[1:-1, 1:-1]
        outside |= oedt >= max(1.0, depth * oedt.max())
    outside &= ~fg
    bg = outside if n_bg <= 0 else _sample(outside, n_bg, rng)
    return fg, bg


def _sample(cand: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(cand)
    out = np.zeros(cand.shape, bool)
    if idx.size:
        out.flat[rng.choice(idx, size=min(n, idx.size), replace=False)] = True
    return out


# ----------------------------------------------------------------------------- segmenters
# Each takes (crop image float, fg seeds, bg seeds, box in crop coords) -> bool organ mask.


def seg_random_walker(img, fg, bg, box, beta: float = 130.0):
    from skimage.segmentation import random_walker

    labels = np.zeros(img.shape, np.int32)
    labels[bg] = 2
    labels[fg] = 1
    if not fg.any() or not bg.any():
        return fg.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = random_walker(img.astype(np.float64), labels, beta=beta, mode="bf")
    return out == 1


def seg_watershed(img, fg, bg, box):
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    grad = sobel(ndi.gaussian_filter(img.astype(np.float64), 0.7))
    markers = np.zeros(img.shape, np.int32)
    markers[bg] = 2
    markers[fg] = 1
    return watershed(grad, markers) == 1


def _gmm1d(x: np.ndarray, k: int = 2, iters: int = 6) -> tuple:
    x = x.astype(np.float64)
    mu = np.quantile(x, np.linspace(0.25, 0.75, k)) if x.size else np.zeros(k)
    var = np.full(k, max(x.var() / k, 1e-3) if x.size else 1.0)
    w = np.full(k, 1.0 / k)
    for _ in range(iters):
        ll = -0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(2 * np.pi * var) + np.log(w)
        ll -= ll.max(1, keepdims=True)
        r = np.exp(ll)
        r /= r.sum(1, keepdims=True)
        nk = r.sum(0) + 1e-6
        w = nk / nk.sum()
        mu = (r * x[:, None]).sum(0) / nk
        var = (r * (x[:, None] - mu) ** 2).sum(0) / nk + 1e-3
    return w, mu, var


def _loglik(x: np.ndarray, gmm: tuple) -> np.ndarray:
    w, mu, var = gmm
    ll = -0.5 * (x[..., None] - mu) ** 2 / var - 0.5 * np.log(2 * np.pi * var) + np.log(w)
    mx = ll.max(-1)
    return mx + np.log(np.exp(ll - mx[..., None]).sum(-1))


def _connected_to(seg: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    lab, _ = ndi.label(seg)
    keep = np.unique(lab[seeds & seg])
    return np.isin(lab, keep[keep > 0])


def seg_grabcut(img, fg, bg, box, iters: int = 3, smooth: float = 1.0):
    y0, y1, x0, x1 = box
    inbox = np.zeros(img.shape, bool)
    inbox[y0:y1, x0:x1] = True
    cur = inbox & ~bg
    for _ in range(iters):
        f_pix, b_pix = img[cur | fg], img[(~cur) | bg]
        if f_pix.size < 3 or b_pix.size < 3:
            break
        llr = _loglik(img, _gmm1d(f_pix)) - _loglik(img, _gmm1d(b_pix))
        llr = ndi.gaussian_filter(llr, smooth)
        new = ((llr > 0) & inbox & ~bg) | fg
        new = _connected_to(new, fg)
        if np.array_equal(new, cur):
            break
        cur = new
    return cur


def seg_region_grow(img, fg, bg, box, k: float = 2.5):
    sm = ndi.gaussian_filter(img.astype(np.float64), 0.7)
    vals = sm[fg]
    if vals.size == 0:
        return fg.copy()
    mu = np.median(vals)
    tol = max(k * 1.4826 * np.median(np.abs(vals - mu)), 0.05)
    if bg.any():  # do not accept intensities closer to the background seeds' median
        tol = min(tol, max(0.5 * abs(np.median(sm[bg]) - mu), 0.03))
    cand = (np.abs(sm - mu) <= tol) & ~bg
    return _connected_to(cand | fg, fg)


UPSAMPLE = {"watershed": 48}

SEGMENTERS = {
    "random_walker": seg_random_walker,
    "watershed": seg_watershed,
    "grabcut": seg_grabcut,
    "region_grow": seg_region_grow,
}


class ClassicalScorer:
    """``score(image, mask) -> {label: (iou, conf)}`` with a prompted classical segmenter.

    ``perturb`` prompts are drawn per organ (fixed seed, so a score is reproducible);
    the reported IoU is that of their majority-vote consensus with the mask, the confidence
    the mean IoU of each segmentation with the consensus.
    """

    name = "classical"

    def __init__(self, method: str = "random_walker", perturb: int = 4, n_fg: int = 12, n_bg: int = 0,
                 depth: tuple = (0.35, 0.65), ring: tuple = (1, 3), margin: float = 0.5, min_pixels: int = 4,
                 seed: int = 0, upsample_to: int | None = None):
        if method not in SEGMENTERS:
            raise ValueError(f"unknown classical method '{method}'; choose one of: {', '.join(METHODS)}")
        self.method, self.fn = method, SEGMENTERS[method]
        self.perturb, self.n_fg, self.n_bg = perturb, n_fg, n_bg
        self.depth, self.ring, self.margin, self.min_pixels, self.seed = depth, ring, margin, min_pixels, seed
        # organs whose box is smaller than this are segmented on a finer grid (None = the method's default:
        # 48 px for watershed, where it raised the phantom AUC from 0.96 to 0.99; off for the random walker,
        # whose edge weights do not scale with the grid)
        self.upsample_to = UPSAMPLE.get(method, 0) if upsample_to is None else upsample_to

    def score(self, image: np.ndarray, mask: np.ndarray) -> dict:
        image = np.asarray(image, np.float32)
        mask = np.asarray(mask)
        if image.shape != mask.shape or image.ndim != 2:
            raise ValueError(f"classical scorer wants 2D image and mask of one shape, got {image.shape} and {mask.shape}")
        out = {}
        for lab in (int(v) for v in np.unique(mask) if v != 0):
            m = mask == lab
            if m.sum() < self.min_pixels:
                continue
            out[lab] = self._score_organ(image, m, (mask != 0) & ~m, lab)
        return out

    def _score_organ(self, image, m, other, lab) -> tuple[float, float]:
        y0, y1, x0, x1 = _bbox(m)
        pad = int(round(self.margin * max(y1 - y0, x1 - x0))) + max(self.ring) + 3
        cy0, cy1 = max(0, y0 - pad), min(m.shape[0], y1 + pad)
        cx0, cx1 = max(0, x0 - pad), min(m.shape[1], x1 + pad)
        crop = (slice(cy0, cy1), slice(cx0, cx1))
        img, mc, oc = image[crop], m[crop], other[crop]
        box = (y0 - cy0, y1 - cy0, x0 - cx0, x1 - cx0)
        f = int(np.clip(np.ceil(self.upsample_to / max(y1 - y0, x1 - x0)), 1, 4)) if self.upsample_to else 1
        if f > 1:  # small organ: segment on a finer grid so a 1-pixel border error costs less
            img = ndi.zoom(img, f, order=1)
            mc, oc = (np.kron(a, np.ones((f, f), bool)) for a in (mc, oc))
            box = tuple(b * f for b in box)
        rng = np.random.default_rng(self.seed * 1000003 + lab)
        segs = []
        for i in range(self.perturb):
            t = i / max(1, self.perturb - 1)
            depth = self.depth[0] + t * (self.depth[1] - self.depth[0])
            ring = int(round(self.ring[0] + t * (self.ring[1] - self.ring[0])))
            fg, bg = make_prompt(mc, oc, box, rng, depth=depth, ring=ring, n_fg=self.n_fg, n_bg=self.n_bg)
            segs.append(self.fn(img, fg, bg, box))
        cons = np.mean(segs, axis=0) >= 0.5
        conf = float(np.mean([iou(s, cons) for s in segs]))
        return iou(cons, mc), conf
