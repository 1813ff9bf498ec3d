"""Autoencoder stage on the tiny index: training, scale factor, evaluation, augmentation."""

from __future__ import annotations

import json

import numpy as np
import torch

from mrgen import autoencoder
from mrgen.autoencoder.data import augment


def test_augment_is_in_plane_and_probabilistic():
    torch.manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4).repeat(50, 1, 1, 1)
    assert torch.equal(augment(x, 0.0), x)
    y = augment(x, 1.0)
    variants = {tuple(x[0].flip(-1).flatten().tolist()), tuple(x[0].flip(-2).flatten().tolist())}
    variants |= {tuple(x[0].rot90(k, (-2, -1)).flatten().tolist()) for k in (1, 2, 3)}
    seen = {tuple(y[i].flatten().tolist()) for i in range(0, 100, 2)}
    assert seen == variants  # all five transforms, nothing else
    z = augment(x, 0.2)
    changed = sum(not torch.equal(z[i], x[i]) for i in range(100))
    assert 5 <= changed <= 40
    v = torch.randn(3, 1, 5, 4, 4)  # 3D: planes rotate, depth order stays
    w = augment(v, 1.0)
    assert all(torch.allclose(w[i].sum((-2, -1)), v[i].sum((-2, -1))) for i in range(3))


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
    assert 0 < ev["mse"] < 1 and ev["psnr"] == ev["psnr"]
