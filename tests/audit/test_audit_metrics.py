"""The audit's metrics against independent implementations and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.metrics import structural_similarity

from mrgen.audit import binomial, diversity, fidelity, memorisation, similarity


def _smooth(rng, n, size=24):
    return np.clip(ndi.gaussian_filter(rng.normal(0, 1, (n, size, size)), (0, 2, 2)) * 3, -1, 1)


@pytest.mark.parametrize("shape", [(20, 24), (5, 9)])  # a 7-px window, and the largest odd window (5) of a small image
def test_ssim_is_skimages(shape):
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (4, *shape))
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)
    win = 7 if min(shape) >= 7 else 5
    want = [structural_similarity(x, y, data_range=2, win_size=win) for x, y in zip(a, b)]
    assert similarity.ssim_pairs(a, b) == pytest.approx(want, abs=1e-6)  # float32 inputs
    m = similarity.ssim_matrix(a, b)
    assert m[2, 3] == pytest.approx(structural_similarity(a[2], b[3], data_range=2, win_size=win), abs=1e-5)
    assert np.diag(similarity.ssim_matrix(a, a)) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_for_large_images_else_ssim():
    rng = np.random.default_rng(2)
    small, large = _smooth(rng, 2, 32), _smooth(rng, 2, 176)
    assert diversity.diversity_pairs(small[:1], small[1:])[1] == "SSIM"
    vals, metric = diversity.diversity_pairs(large, large)
    assert metric == "MS-SSIM" and vals == pytest.approx([1.0, 1.0], abs=1e-5)


def test_cosine_matrix_by_hand():
    m = similarity.cosine_matrix([[1, 0], [1, 1]], [[2, 0], [0, 3]])
    assert m == pytest.approx(np.array([[1, 0], [2 ** -0.5, 2 ** -0.5]]))


def test_memorisation_flags_copies_and_not_unseen_images():
    rng = np.random.default_rng(3)
    train, held, unseen = list(_smooth(rng, 30)), list(_smooth(rng, 20)), list(_smooth(rng, 20))
    feats = lambda xs: np.stack([x.reshape(6, 4, 6, 4).mean((1, 3)).ravel() for x in xs])  # noqa: E731  4x4 means
    synth = [train[4], train[17]] + unseen  # two planted copies, then 20 images nobody trained on
    rec = memorisation.memorisation(synth, train, held, feats(synth), feats(train), feats(held), quantile=1.0, margin=0.5)
    flagged = sorted(p["synthetic"] for p in rec["pairs"] if p["flagged"])
    assert flagged == [0, 1]
    copy = next(p for p in rec["pairs"] if p["synthetic"] == 0)
    assert copy["training"] == 4 and copy["ssim"] == pytest.approx(1.0, abs=1e-6)
    # the rule: halfway from the held-out images' largest nearest-neighbour similarity to 1, in SSIM or in cosine
    best = similarity.ssim_matrix(held, train).max(1).max()
    assert rec["thresholds"]["ssim"] == pytest.approx(best + 0.5 * (1 - best))
    noisy = [np.clip(train[9] + rng.normal(0, 0.1, train[9].shape), -1, 1)]  # a noisy copy: flagged by SSIM
    rec3 = memorisation.memorisation(noisy, train, held, feats(noisy), feats(train), feats(held))
    assert rec3["flagged"] == 1 and rec3["pairs"][0]["training"] == 9
    # real images no model saw are not flagged
    rec2 = memorisation.memorisation(unseen, train, held, feats(unseen), feats(train), feats(held))
    assert rec2["flagged"] == 0
    assert memorisation.threshold(np.array([0.1, 0.2, 0.3, 0.4, 0.5]), 0.5) == pytest.approx(0.3)
    assert memorisation.threshold(np.array([0.1, 0.2, 0.3, 0.4, 0.6]), 1.0, 0.5) == pytest.approx(0.8)


def test_blank_images_are_left_out():
    rng = np.random.default_rng(4)
    train = list(_smooth(rng, 5)) + [np.zeros((24, 24))]
    held = list(_smooth(rng, 3)) + [np.zeros((24, 24))]
    feats = lambda xs: np.stack([x.ravel() + 1.0 for x in xs])  # noqa: E731
    rec = memorisation.memorisation([np.zeros((24, 24))], train, held, feats([np.zeros((24, 24))]), feats(train), feats(held))
    assert rec["compared"] == {"synthetic": 0, "training": 5, "held_out": 3, "blank_left_out": 3} and rec["flagged"] == 0


def test_fidelity_statistics_by_hand():
    syn = ([np.array([[0.0, 0.0], [1.0, 1.0]])], [np.array([[1, 1], [1, 1]])])
    real = ([np.array([[0.5, 0.5], [1.5, 1.5]])], [np.array([[1, 1], [1, 1]])])
    s = fidelity.compare(fidelity.pooled(*syn, 1), fidelity.pooled(*real, 1))
    assert s == {"synthetic_pixels": 4, "real_pixels": 4}  # under MIN_PIXELS: no statistics
    a = np.repeat([0.0, 1.0], 50)
    b = a + 0.5
    s = fidelity.compare(a, b)
    assert s["w1"] == pytest.approx(0.5) and s["synthetic_mean"] == pytest.approx(0.5)
    assert s["real_sd"] == pytest.approx(0.5) and s["mean_diff_sd"] == pytest.approx(-1.0)
    out = fidelity.fidelity(([a.reshape(10, 10)], [np.ones((10, 10), int)]),
                            {"oracle": ([b.reshape(10, 10)], [np.ones((10, 10), int)])}, {1: "liver", 2: "spleen"})
    assert out["oracle"]["liver"]["w1"] == pytest.approx(0.5) and "w1" not in out["oracle"]["spleen"]


def test_random_pairs_are_distinct_and_seeded():
    rng = np.random.default_rng(0)
    p = diversity.random_pairs(30, 50, rng)
    assert len(p) == len(set(p)) == 50 and all(i < j for i, j in p)
    assert diversity.random_pairs(4, 50, rng) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert p == diversity.random_pairs(30, 50, np.random.default_rng(0))


def test_binomial_intervals_by_hand():
    # published values: Clopper-Pearson 5/10 = (0.1871, 0.8129), 0/10 = (0, 0.3085); Wilson 5/10 = (0.2366, 0.7634)
    assert binomial.clopper_pearson(5, 10) == pytest.approx((0.1871, 0.8129), abs=1e-4)
    assert binomial.clopper_pearson(0, 10) == pytest.approx((0.0, 0.3085), abs=1e-4)
    assert binomial.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert binomial.p_value(0, 10) == pytest.approx(2 / 1024)  # both tails of the exact binomial: 2 * 0.5 ** 10
    with pytest.raises(ValueError, match="0 <= k <= n"):
        binomial.clopper_pearson(3, 2)
