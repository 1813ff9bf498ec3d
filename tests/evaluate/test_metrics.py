"""Metric golden values: Dice, HD95, PSNR/SSIM, Fréchet distance, KID; EfficientNet-Lite0 features."""

import math

import numpy as np
import pytest

from mrgen.evaluate.metrics import dice_per_label, frechet_distance, hd95, kid, psnr, ssim


def test_dice_golden_values():
    gt = np.zeros((2, 4, 4), int)
    pred = np.zeros((2, 4, 4), int)
    gt[0, :2, :2] = 1  # 4 voxels
    pred[0, :2, :1] = 1  # 2 voxels, all inside
    gt[1, 0, 0] = 2
    pred[1, 3, 3] = 3
    d = dice_per_label(pred, gt, [1, 2, 3, 4])
    assert d[1] == pytest.approx(2 * 2 / (4 + 2))
    assert d[2] == 0.0 and d[3] == 0.0 and math.isnan(d[4])
    assert dice_per_label(gt, gt, [1, 2]) == {1: 1.0, 2: 1.0}


def test_hd95_golden_values_and_spacing():
    gt = np.zeros((20, 20), int)
    gt[5:10, 5:10] = 1
    pred = np.roll(gt, 2, axis=0)
    assert hd95(gt, gt, 1) == 0.0
    assert hd95(pred, gt, 1) == pytest.approx(2.0)
    assert hd95(pred, gt, 1, spacing=(1.5, 1.0)) == pytest.approx(3.0)
    assert math.isnan(hd95(np.zeros_like(gt), gt, 1))


def test_psnr_ssim():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (32, 32))
    assert ssim(a, a) == pytest.approx(1.0)
    b = a + 0.1
    assert psnr(a, b) == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-6)  # data range 2, MSE 0.01


def test_frechet_distance_golden():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    d = np.arange(8) * 0.5
    assert frechet_distance(a, a + d) == pytest.approx(float(d @ d), rel=1e-6)  # same covariance: |mu_a - mu_b|^2
    # two 1-D Gaussians: (mu1-mu2)^2 + (s1-s2)^2
    x = rng.standard_normal((20000, 1))
    mu, var = float(x.mean()), float(np.var(x, ddof=1))
    assert frechet_distance(x, 3 * x + 1) == pytest.approx((2 * mu + 1) ** 2 + (3 - 1) ** 2 * var, rel=1e-6)


def test_kid_unbiased():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((300, 16)), rng.standard_normal((300, 16))
    same = kid(a, b)
    assert abs(same) < 0.01  # unbiased: ~0 for one distribution (can be slightly negative)
    assert kid(a, b + 1.0) > 0.1 > abs(same)
    assert kid(a, b, subset_size=100) == pytest.approx(kid(a, b, subset_size=100))


def test_efficientnet_lite0_features_cached_as_safetensors(tmp_path, monkeypatch):
    monkeypatch.setenv("MRGEN_CACHE", str(tmp_path))
    from mrgen.evaluate import extractor as F

    F._CACHE.clear()
    imgs = [np.zeros((32, 32), np.float32), np.linspace(-1, 1, 32 * 32, dtype=np.float32).reshape(32, 32)]
    f = F.features(imgs)
    assert f.shape == (2, 1280) and np.isfinite(f).all() and not np.allclose(f[0], f[1])
    assert (tmp_path / "efficientnet-lite0.safetensors").exists()
    F._CACHE.clear()
    assert np.allclose(F.features(imgs), f, atol=1e-5)  # second load from the safetensors file
    with pytest.raises(FileNotFoundError, match="safetensors"):
        F.load_extractor(str(tmp_path / "weights.pth"))
    F._CACHE.clear()
