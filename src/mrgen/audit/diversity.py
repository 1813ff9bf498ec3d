"""Diversity: how alike are the synthetic images, against how alike real target images are?

Three figures, each the mean pairwise similarity (MS-SSIM, or SSIM when the images are smaller
than MS-SSIM's five scales allow; :func:`mrgen.audit.similarity.diversity_pairs` says which) over
at most ``audit.pairs`` seeded pairs:

* ``within_mask``: candidates rendered from the same mask (all candidates, kept or not);
* ``kept``: two different kept synthetic images;
* ``real``: two different real target images.

Higher similarity = less diverse. ``kept`` well above ``real`` means the engine renders one look.
"""

from __future__ import annotations

import itertools

import numpy as np

from mrgen.audit.similarity import diversity_pairs


def random_pairs(n: int, n_pairs: int, rng: np.random.Generator) -> list:
    """Up to ``n_pairs`` distinct unordered pairs ``(i, j)``, ``i < j``, of ``range(n)``."""
    every = list(itertools.combinations(range(n), 2))
    if len(every) <= n_pairs:
        return every
    return [every[i] for i in sorted(rng.choice(len(every), n_pairs, replace=False))]


def _stats(vals: np.ndarray, metric: str) -> dict:
    if not vals.size:
        return {"pairs": 0, "metric": metric}
    return {"pairs": int(vals.size), "metric": metric, "mean": float(vals.mean()), "sd": float(vals.std())}


def across(images: list, n_pairs: int, rng: np.random.Generator) -> dict:
    pairs = random_pairs(len(images), n_pairs, rng)
    if not pairs:
        return _stats(np.zeros(0), "SSIM")
    a = np.stack([images[i] for i, _ in pairs])
    b = np.stack([images[j] for _, j in pairs])
    vals, metric = diversity_pairs(a, b)
    return _stats(vals, metric)


def within(groups: list, n_pairs: int, rng: np.random.Generator) -> dict:
    """Pairs inside each group of 2D images (the candidates of one mask)."""
    every = [(g, i, j) for g, imgs in enumerate(groups) for i, j in itertools.combinations(range(len(imgs)), 2)]
    if len(every) > n_pairs:
        every = [every[k] for k in sorted(rng.choice(len(every), n_pairs, replace=False))]
    if not every:
        return _stats(np.zeros(0), "SSIM")
    a = np.stack([groups[g][i] for g, i, _ in every])
    b = np.stack([groups[g][j] for g, _, j in every])
    vals, metric = diversity_pairs(a, b)
    return _stats(vals, metric)


def diversity(groups: list, kept: list, real: list, n_pairs: int, seed: int = 0) -> dict:
    return {"within_mask": within(groups, n_pairs, np.random.default_rng([seed, 10])),
            "kept": across(kept, n_pairs, np.random.default_rng([seed, 11])),
            "real": across(real, n_pairs, np.random.default_rng([seed, 12]))}
