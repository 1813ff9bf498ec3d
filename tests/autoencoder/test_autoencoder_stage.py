"""Autoencoder stage on the tiny index: training, scale factor, evaluation, augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mrgen import autoencoder
from mrgen.autoencoder.data import apply_flip_rot, augment


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_is_in_plane_and_probabilistic():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4).repeat(50, 1, 1, 1)
    same, params = augment(x, 0.0, _gen(0))
    assert torch.equal(same, x) and params.op.tolist() == [-1] * 100
    y, params = augment(x, 1.0, _gen(0))
    # op code -> the expected in-plane transform, written out per code (the contract of FLIP_ROT_OPS)
    expect = {0: lambda t: t.flip(-1), 1: lambda t: t.flip(-2), 2: lambda t: t.rot90(2, (-2, -1)),
              3: lambda t: t.rot90(1, (-2, -1)), 4: lambda t: t.rot90(3, (-2, -1))}
    assert set(params.op.tolist()) == {0, 1, 2, 3, 4}  # all five transforms drawn, never "unchanged" at prob 1
    assert all(torch.equal(y[i], expect[int(c)](x[i])) for i, c in enumerate(params.op))
    z, params = augment(x, 0.2, _gen(0))
    changed = sum(not torch.equal(z[i], x[i]) for i in range(100))
    assert 5 <= changed <= 40 and changed == int((params.op >= 0).sum())
    v = torch.randn(3, 1, 5, 4, 4)  # 3D: planes rotate, depth order stays
    w, _ = augment(v, 1.0, _gen(1))
    assert all(torch.allclose(w[i].sum((-2, -1)), v[i].sum((-2, -1))) for i in range(3))
    _, params = augment(torch.zeros(200, 1, 4, 6), 1.0, _gen(2))  # non-square planes: no 90/270° turns
    assert set(params.op.tolist()) == {0, 1, 2}


def test_augment_draws_from_its_generator_only_and_params_replay():
    x = torch.randn(16, 1, 8, 8)
    state = torch.get_rng_state()
    a, pa = augment(x, 0.5, _gen(7))
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    b, pb = augment(x, 0.5, _gen(7))
    assert torch.equal(pa.op, pb.op) and torch.equal(a, b)  # same seed, same params, same batch
    assert torch.equal(apply_flip_rot(x, pa), a)  # the returned params reproduce the output exactly
    _, pc = augment(x, 0.5, _gen(8))
    assert not torch.equal(pa.op, pc.op)
    with pytest.raises(ValueError, match="draw them for this batch"):
        apply_flip_rot(x[:3], pa)


def test_kl_loss_zero_for_standard_normal():
    assert float(autoencoder.kl_loss(torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3))) == 0.0
    assert float(autoencoder.kl_loss(torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1))) == 0.5


def test_run_and_evaluate(tiny_index, tiny_config):
    cfg = tiny_config(tiny_index, "autoencoder.train.preview_every=2")
    res = autoencoder.run(cfg)
    out = tiny_index / "autoencoder"
    meta = json.loads((out / "model.json").read_text())
    assert res["step"] == 4 and meta["kind"] == "autoencoder" and meta["step"] == 4
    assert np.isfinite(meta["scale_factor"]) and meta["scale_factor"] > 0
    assert meta["n_items"] == 24 and meta["modalities"] == ["T1", "T2"]
    losses = [json.loads(ln)["loss"] for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert (out / "ckpt" / "state.safetensors").exists() and (out / "ckpt" / "state.json").exists()
    assert sorted(p.name for p in (out / "previews").glob("*.png")) == ["step_0000002.png", "step_0000004.png"]
    assert autoencoder.run(cfg)["skipped"]
    ev = autoencoder.evaluate(cfg)
    for k in ("psnr", "ssim", "l1", "mse"):
        assert np.isfinite(ev[k]), k
    assert ev["items"] == 8 and set(ev["per_modality"]) == {"T1", "T2"}
    assert json.loads((out / "eval.json").read_text())["psnr"] == ev["psnr"]
    pm = ev["per_modality"]
    assert ev["psnr"] == pytest.approx(sum(m["psnr"] * m["items"] for m in pm.values()) / ev["items"])  # item mean
    # a mean of per-item PSNRs is at least the PSNR of the mean MSE (Jensen: -log is convex); equal only if all agree
    assert 0 < ev["mse"] < 1 and ev["psnr"] > 10 * np.log10(1 / ev["mse"])


class _Shift(torch.nn.Module):
    """A stand-in autoencoder whose reconstruction is the input plus ``d`` (in [-1, 1] units)."""

    def __init__(self, d: float):
        super().__init__()
        self.d, self.w = d, torch.nn.Parameter(torch.zeros(()))

    def reconstruct(self, x):
        return x + self.d


def test_evaluate_psnr_of_known_reconstructions(tiny_index, tiny_config, monkeypatch):
    """Hand-computed: +0.02 in [-1, 1] is +0.01 on the [0, 1] scale, MSE 1e-4, PSNR 10·log10(1 / 1e-4) = 40 dB (the
    tiny index's test images stay below 0.98, so the clamp to [-1, 1] never bites); identity: MSE 0, PSNR at its
    1e-12 floor, 120 dB."""
    def evaluate_with(d: float) -> dict:
        monkeypatch.setattr(autoencoder, "load_autoencoder", lambda wd, c, device="cpu": (_Shift(d), {"sha256": "stub"}))
        return autoencoder.evaluate(tiny_config(tiny_index))

    ev = evaluate_with(0.02)
    assert ev["items"] == 8 and ev["psnr"] == pytest.approx(40.0, abs=1e-3)
    assert ev["mse"] == pytest.approx(1e-4, rel=1e-3) and ev["l1"] == pytest.approx(0.01, rel=1e-3)
    assert ev["ssim"] < 1.0
    ev = evaluate_with(0.0)
    assert ev["psnr"] == pytest.approx(120.0) and ev["mse"] == 0.0 and ev["l1"] == 0.0 and ev["ssim"] == pytest.approx(1.0)
