"""Controller stage + generator on the tiny index (autoencoder -> ldm -> controller)."""

from __future__ import annotations

import json

import numpy as np
import torch

from mrgen import autoencoder, controller, ldm, nets


def test_controller_run_and_generate(tiny_index, tiny_config):
    cfg = tiny_config(tiny_index, "controller.train.preview_every=4")
    autoencoder.run(cfg)
    ldm.run(cfg)
    res = controller.run(cfg)
    out = tiny_index / "controller"
    assert res["step"] == 4
    losses = [json.loads(ln)["loss"] for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(losses))
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "controller" and meta["n_labels"] == 2 and meta["mask_encoding"] == "merged"
    assert meta["ldm_sha256"] == json.loads((tiny_index / "ldm" / "model.json").read_text())["sha256"]
    assert meta["source_items"] > 0 and meta["target_items"] > 0
    assert (out / "previews" / "step_0000004.png").exists()
    # only controller tensors are exported (the UNet stays in ldm/)
    assert all(not k.startswith("up_blocks.") for k in meta["tensors"])

    gen = controller.load_generator(tiny_index, cfg)
    assert isinstance(gen, controller.LatentRenderer) and gen.mode == "controlnet"
    assert isinstance(gen.denoiser, nets.ControlledUNet) and gen.conditioning_scale == cfg.controller.conditioning_scale == 1.0
    assert set(gen.hashes) == {"autoencoder", "ldm", "controller", "text"}
    assert gen.n_labels == 2 and gen.scale_factor > 0
    masks = torch.zeros(3, 16, 16, dtype=torch.long)
    masks[:, 4:10, 4:10] = 1
    masks[1, 11:14, 11:14] = 2
    prompt = "T2 MRI; fat high signal; upper abdomen; liver"
    imgs = gen.generate(masks, [prompt] * 3, [5, 6, 5], guidance=2.0, steps=3, eta=0.0)
    assert imgs.shape == (3, 1, 16, 16) and imgs.dtype == torch.float32
    assert float(imgs.min()) >= -1 and float(imgs.max()) <= 1 and torch.isfinite(imgs).all()
    again = gen.generate(masks[2:], [prompt], [5], guidance=2.0, steps=3, eta=0.0)
    assert torch.allclose(again[0], imgs[0], atol=1e-4)  # the seed, not the batch, decides the sample
    assert torch.allclose(again[0], imgs[2], atol=1e-4)
    # controller.conditioning_scale is fixed when the renderer is loaded
    half = controller.load_generator(tiny_index, tiny_config(tiny_index, "controller.conditioning_scale=0.5"))
    assert half.conditioning_scale == 0.5 and half.denoiser.controller is not gen.denoiser.controller
    h = half.generate(masks[:1], [prompt], [1], guidance=1.0, steps=3)
    full = gen.generate(masks[:1], [prompt], [1], guidance=1.0, steps=3)
    assert not torch.allclose(h, full, atol=1e-5, rtol=0)  # ~1e-4 after 4 training steps; same batch: no kernel noise
    # eta > 0 draws per-sample noise, still seeded
    e1 = half.generate(masks[:1], [prompt], [1], guidance=1.0, steps=3, eta=1.0)
    e2 = half.generate(masks[:1], [prompt], [1], guidance=1.0, steps=3, eta=1.0)
    assert torch.equal(e1, e2) and not torch.equal(e1, h)


def test_onehot_encoding_and_rerun_skips(tiny_index, tiny_config):
    cfg = tiny_config(tiny_index, "controller.mask_encoding=onehot", "controller.target_fraction=0.25")
    autoencoder.run(cfg)
    ldm.run(cfg)
    assert not controller.run(cfg)["skipped"]
    assert controller.run(cfg)["skipped"]
    gen = controller.load_generator(tiny_index, cfg)
    img = gen.generate(torch.zeros(1, 16, 16, dtype=torch.long), ["T2 MRI"], [0], guidance=1.0, steps=2)
    assert img.shape == (1, 1, 16, 16)
    wrong = tiny_config(tiny_index, "controller.mask_encoding=merged")
    try:
        controller.load_generator(tiny_index, wrong)
    except ValueError as e:
        assert "mask_encoding" in str(e)
    else:
        raise AssertionError("a mask-encoding mismatch must be refused")
