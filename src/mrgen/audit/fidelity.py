"""Fidelity per label: do the intensities inside each label look like those of real target images?

Synthetic images carry their conditioning masks. Real target images have no masks, so a **proxy**
gives their labels; each proxy is a *view* of the comparison, named in the record:

* ``segmenter``: the run's target segmenter's predictions on the real unannotated target images
  (what a user without target masks has);
* ``oracle``: the held-out test images with their manual masks (benchmarks only: evaluation masks
  the engine never sees; not available in real use).

Per label and view: mean and standard deviation of the intensities ([-1, 1]) inside the label on
each side, the difference of means in units of the real side's sd, and the Wasserstein-1 distance
between the two intensity distributions (``scipy.stats.wasserstein_distance``; in intensity units).
"""

from __future__ import annotations

import numpy as np

MIN_PIXELS = 20  # a side with fewer pixels of a label gives no statistics for it


def pooled(images: list, masks: list, label: int) -> np.ndarray:
    """All intensities inside ``label`` over the images."""
    vals = [np.asarray(im, np.float32)[np.asarray(m) == label] for im, m in zip(images, masks)]
    return np.concatenate(vals) if vals else np.zeros(0, np.float32)


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Statistics of synthetic intensities ``a`` against real intensities ``b``."""
    from scipy.stats import wasserstein_distance

    out = {"synthetic_pixels": int(a.size), "real_pixels": int(b.size)}
    if a.size < MIN_PIXELS or b.size < MIN_PIXELS:
        return out
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out.update({"synthetic_mean": float(a.mean()), "synthetic_sd": float(a.std()), "real_mean": float(b.mean()),
                "real_sd": float(b.std()), "w1": float(wasserstein_distance(a, b))})
    out["mean_diff_sd"] = float((a.mean() - b.mean()) / b.std()) if b.std() > 0 else None
    return out


def fidelity(synth: tuple, views: dict, labels: dict) -> dict:
    """``{view: {label name: stats}}``; ``synth`` = (images, masks), ``views`` = ``{name: (images, masks)}``,
    ``labels`` = ``{value: name}``."""
    out = {}
    for view, (images, masks) in views.items():
        out[view] = {name: compare(pooled(*synth, int(v)), pooled(images, masks, int(v))) for v, name in labels.items()}
    return out


def histograms(synth: tuple, real: tuple, labels: dict, bins: int = 40) -> dict:
    """``{label name: (edges, synthetic density, real density)}`` for the figure."""
    edges = np.linspace(-1, 1, bins + 1)
    out = {}
    for v, name in labels.items():
        a, b = pooled(*synth, int(v)), pooled(*real, int(v))
        if a.size >= MIN_PIXELS and b.size >= MIN_PIXELS:
            out[name] = (edges, np.histogram(a, edges, density=True)[0], np.histogram(b, edges, density=True)[0])
    return out
