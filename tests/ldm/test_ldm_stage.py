"""LDM stage on the tiny index (after a tiny autoencoder): caches, prompts, training, export."""

from __future__ import annotations

import json

import numpy as np
import torch

from mrgen import autoencoder, ldm


def _losses(folder):
    return [json.loads(ln)["loss"] for ln in (folder / "train_log.jsonl").read_text().splitlines()]


def test_ldm_run_learned_text(tiny_index, tiny_config):
    cfg = tiny_config(tiny_index, "ldm.train.preview_every=4")
    autoencoder.run(cfg)
    rows = ldm.ldm_rows(cfg)
    # disjoint subjects: 3 train subjects; each keeps T1 or T2, never both
    by_subject = {}
    for r in rows:
        by_subject.setdefault(r["subject"], set()).add(r["modality"])
    assert all(len(m) == 1 for m in by_subject.values()) and len(by_subject) == 3
    prompts = {ldm.prompt_of(r) for r in rows if r["modality"] == "T2"}
    assert all("liver" not in p and p.startswith("T2 MRI") for p in prompts)  # unannotated: organs dropped
    res = ldm.run(cfg)
    out = tiny_index / "ldm"
    assert res["step"] == 4
    losses = _losses(out)
    assert len(losses) == 4 and all(np.isfinite(losses))
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "ldm" and meta["scale_factor"] > 0 and meta["text"]["encoder"] == "learned"
    assert (out / "text" / "model.safetensors").exists() and (out / LATENTS).exists()
    assert (out / "previews" / "step_0000004.png").exists()
    unet, text, meta2 = ldm.load_ldm(tiny_index, cfg)
    assert text.trainable and meta2["sha256"] == meta["sha256"]
    ctx = text.encode(["T2 MRI", ""])
    assert ctx.shape == (2, cfg.text.max_length, cfg.text.dim)
    # the latent cache is reused: same tensors without touching the autoencoder
    ae, ae_meta = autoencoder.load_autoencoder(tiny_index, cfg)
    mu, sigma = ldm.cached_latents(cfg, None, ae_meta, rows)
    assert mu.shape[0] == len(rows) and mu.shape[1:] == (4, 8, 8) and bool((sigma > 0).all())


LATENTS = ldm.LATENTS


def test_conditioner_dropout_and_bank(tiny_index, tiny_config):
    from mrgen.nets import get_text_encoder

    cfg = tiny_config(tiny_index)
    text = get_text_encoder(cfg.text)
    cond = ldm.Conditioner(cfg, text, ["b", "a", "b"])
    assert cond.prompts == ["", "a", "b"] and cond.bank is None
    assert cond.ids(["b", "a", ""]).tolist() == [2, 1, 0]
    torch.manual_seed(0)
    ids = ldm.drop_prompts(cond.ids(["a"] * 1000), 0.1)
    assert 60 < int((ids == 0).sum()) < 140 and set(ids.tolist()) == {0, 1}
    assert cond.context(ids[:3], "cpu").shape == (3, cfg.text.max_length, cfg.text.dim)
    torch.manual_seed(0)  # one torch.rand(N) draw per call: the stages' RNG stream depends on it
    assert torch.equal(ids == 0, torch.rand(1000) < 0.1)
    assert torch.equal(ldm.drop_prompts(torch.tensor([3, 4]), 0.0), torch.tensor([3, 4]))


def test_3d_autoencoder_and_ldm(tiny_index, tiny_config):
    cfg = tiny_config(tiny_index, "data.spatial_dims=3", "data.image_size=16", "data.depth=16",
                      "autoencoder.train.steps=2", "ldm.train.steps=2", "ldm.train.preview_every=2")
    autoencoder.run(cfg)
    ev = autoencoder.evaluate(cfg)
    assert ev["items"] == 2 and np.isfinite(ev["psnr"]) and np.isfinite(ev["ssim"])
    res = ldm.run(cfg)
    assert res["step"] == 2 and all(np.isfinite(_losses(tiny_index / "ldm")))
    rows = ldm.ldm_rows(cfg)
    assert all(r["kind"] == "volume" for r in rows)
    mu, _ = ldm.cached_latents(cfg, None, autoencoder.load_autoencoder(tiny_index, cfg)[1], rows)
    assert mu.shape == (len(rows), 4, 8, 8, 8)
    assert (tiny_index / "ldm" / "previews" / "step_0000002.png").exists()


def test_frozen_text_encoder_bank_is_cached(tiny_index, tiny_config):
    import pytest
    from safetensors import safe_open

    from mrgen.nets import TextEncoderError, get_text_encoder

    cfg = tiny_config(tiny_index, "text.encoder=minilm", "ldm.train.steps=1")
    try:
        text = get_text_encoder(cfg.text)
    except TextEncoderError as e:  # pragma: no cover - bundled model package missing
        pytest.skip(str(e))
    autoencoder.run(cfg)
    ldm.run(cfg)
    cache = tiny_index / "ldm" / ldm.TEXT_CACHE
    assert cache.exists() and not (tiny_index / "ldm" / "text").exists()
    keys = lambda: json.loads(safe_open(str(cache), framework="pt").metadata()["keys"])  # noqa: E731
    before = keys()
    assert "" in before and len(before) == len({ldm.prompt_of(r) for r in ldm.ldm_rows(cfg)}) + 1
    bank = ldm.text_bank(cfg, text, ["", "T2 MRI"])  # a new prompt is added, nothing is lost
    assert bank.shape == (2, cfg.text.max_length, 384)
    assert torch.allclose(bank, text.encode(["", "T2 MRI"]), atol=1e-5)
    assert keys() == before + ["T2 MRI"]
    unet, text2, meta = ldm.load_ldm(tiny_index, cfg)
    assert meta["context_dim"] == 384 and not text2.trainable


def _ldm_two_proc(workdir):
    from accelerate.state import PartialState

    from mrgen.config import load_config

    PartialState._reset_state()  # forked from a process that may hold single-process state
    torch.set_num_threads(1)
    ldm.run(load_config("tiny", overrides=[f"run.workdir={workdir}", "ldm.train.steps=2"]))


def test_ldm_two_processes(tiny_index, tiny_config):
    from accelerate import debug_launcher

    autoencoder.run(tiny_config(tiny_index))
    debug_launcher(_ldm_two_proc, args=(str(tiny_index),), num_processes=2)
    state = json.loads((tiny_index / "ldm" / "ckpt" / "state.json").read_text())
    assert state["world"] == 2 and state["step"] == 2
    assert len(_losses(tiny_index / "ldm")) == 2 and all(np.isfinite(_losses(tiny_index / "ldm")))
    assert (tiny_index / "ldm" / "model.safetensors").exists() and (tiny_index / "ldm" / LATENTS).exists()


def test_ldm_resume_matches_uninterrupted(tmp_path, tiny_config, tiny_index_builder):
    """Stage level: stop after 2 steps (checkpoint), rerun to 4 == 4 steps in one go (same losses)."""
    build_tiny_index = tiny_index_builder
    runs = {}
    for name, schedule in (("once", [4]), ("resumed", [2, 4])):
        wd = tmp_path / name
        build_tiny_index(wd)
        autoencoder.run(tiny_config(wd))
        for steps in schedule:
            ldm.run(tiny_config(wd, f"ldm.train.steps={steps}"))
        runs[name] = _losses(wd / "ldm")
    assert len(runs["once"]) == 4 and runs["once"] == runs["resumed"]
