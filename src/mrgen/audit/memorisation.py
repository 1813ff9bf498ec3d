"""Memorisation: is a kept synthetic image a copy of one of the engine's training images?

For every kept synthetic image, its nearest neighbour among the training images by SSIM (pixel
space) and by cosine similarity of image features. The same statistic for real held-out target
images (never trained on) is the baseline: how close an unseen real image comes to the training
set. The rule, per similarity (SSIM, cosine): the threshold is ``Q + m * (1 - Q)``, ``Q`` the
``audit.copy_quantile`` quantile of the baseline (default 1.0: the closest any held-out image comes)
and ``m`` = ``audit.copy_margin`` (default 0.5: halfway from there to identical); a synthetic image
is a **near-copy** when it is above the threshold **in either** similarity (SSIM catches a noisy
copy, whose ImageNet features move; cosine a shifted one, whose pixels do). The counts above each
threshold are reported too. Blank images (standard deviation below :data:`BLANK_SD`) are left out on every side: two
empty slices are alike without anything being copied.
"""

from __future__ import annotations

import numpy as np

from mrgen.audit.similarity import cosine_matrix, ssim_matrix

BLANK_SD = 0.02


def informative(images: list) -> np.ndarray:
    """Indices of the images that are not blank."""
    return np.array([i for i, im in enumerate(images) if float(np.std(im)) >= BLANK_SD], int)


def nearest(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a similarity matrix: the largest value and its column."""
    if sim.size == 0:
        return np.zeros(len(sim)), np.zeros(len(sim), int)
    return sim.max(1), sim.argmax(1)


def threshold(baseline: np.ndarray, quantile: float, margin: float = 0.0) -> float | None:
    """The near-copy threshold ``Q + margin * (1 - Q)``, ``Q`` the ``quantile`` of the baseline similarities
    (None without a baseline)."""
    baseline = np.asarray(baseline, np.float64)
    if not baseline.size:
        return None
    q = float(np.quantile(baseline, quantile))
    return q + margin * (1.0 - q)


def _summary(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    if not x.size:
        return {"n": 0}
    return {"n": int(x.size), "mean": float(x.mean()), "median": float(np.median(x)), "p99": float(np.quantile(x, 0.99)),
            "max": float(x.max())}


def memorisation(synth: list, train: list, held: list, f_synth, f_train, f_held, quantile: float = 1.0,
                 margin: float = 0.5) -> dict:
    """The memorisation record (see the module docstring). Images are 2D ``(H, W)``; ``f_*`` their features.

    Returns ``{"rule", "thresholds", "synthetic", "held_out", "flagged", "pairs", "values"}``; ``pairs`` lists
    every synthetic image's nearest training image (indices into ``synth`` / ``train``), most similar first;
    ``values`` the nearest-neighbour SSIM of each synthetic and held-out image.
    """
    s_ok, t_ok, h_ok = informative(synth), informative(train), informative(held)
    f_synth, f_train, f_held = (np.asarray(f) for f in (f_synth, f_train, f_held))
    tr = [train[i] for i in t_ok]
    ss, sj = nearest(ssim_matrix([synth[i] for i in s_ok], tr))
    sc, _ = nearest(cosine_matrix(f_synth[s_ok], f_train[t_ok])) if len(s_ok) and len(t_ok) else (np.zeros(len(s_ok)), None)
    hs, _ = nearest(ssim_matrix([held[i] for i in h_ok], tr))
    hc, _ = nearest(cosine_matrix(f_held[h_ok], f_train[t_ok])) if len(h_ok) and len(t_ok) else (np.zeros(len(h_ok)), None)
    t_ssim, t_cos = threshold(hs, quantile, margin), threshold(hc, quantile, margin)
    above_s = ss > t_ssim if t_ssim is not None else np.zeros(len(ss), bool)
    above_c = sc > t_cos if t_cos is not None else np.zeros(len(sc), bool)
    flagged = above_s | above_c
    pairs = [{"synthetic": int(s_ok[k]), "training": int(t_ok[sj[k]]), "ssim": float(ss[k]), "cosine": float(sc[k]),
              "flagged": bool(flagged[k])} for k in np.argsort(-ss, kind="stable")]
    held_flags = ((hs > t_ssim) | (hc > t_cos)) if t_ssim is not None else np.zeros(len(hs), bool)
    return {
        "rule": (f"near-copy: nearest-neighbour SSIM or feature cosine above Q + {margin:g} * (1 - Q), Q the "
                 f"{quantile:g} quantile of the held-out real images' nearest-neighbour similarity to the same "
                 "training images"),
        "quantile": quantile, "margin": margin,
        "thresholds": {"ssim": t_ssim, "cosine": t_cos},
        "compared": {"synthetic": int(len(s_ok)), "training": int(len(t_ok)), "held_out": int(len(h_ok)),
                     "blank_left_out": int(len(synth) - len(s_ok) + len(train) - len(t_ok) + len(held) - len(h_ok))},
        "synthetic": {"ssim": _summary(ss), "cosine": _summary(sc)},
        "held_out": {"ssim": _summary(hs), "cosine": _summary(hc), "flagged": int(held_flags.sum())},
        "above_ssim": int(above_s.sum()), "above_cosine": int(above_c.sum()),
        "flagged": int(flagged.sum()), "flagged_fraction": float(flagged.mean()) if flagged.size else 0.0,
        "pairs": pairs,
        "values": {"synthetic": [float(v) for v in ss], "held_out": [float(v) for v in hs]},  # the figure's histograms
    }
