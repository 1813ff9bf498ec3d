"""``controller.mode=concat``: the Med-DDPM renderer (Dorjsembe et al., 2024), trained from scratch.

A pixel-space DDPM: the UNet (:func:`mrgen.nets.build_pixel_unet`) sees the noisy IMAGE in
[-1, 1] concatenated with the encoded label map (``controller.mask_encoding``) and the prompt
through cross-attention; no autoencoder, no LDM, no ControlNet. Everything else is shared with
the ControlNet mode: the batch mix (source items WITH masks + ``controller.target_fraction``
target-modality items with an all-zero or context-only mask and the prompt without organs), prompt dropout
``ldm.prompt_dropout``, ε-MSE under ``cfg.diffusion``'s schedule, :func:`mrgen.train.fit`
(checkpoints, resume, EMA ``controller.train.ema_decay``, previews), DDIM + CFG sampling with
:func:`mrgen.diffusion.sample`. Text: a frozen encoder's embeddings are cached in
``controller/text_cache.safetensors``; a ``learned`` encoder trains jointly and is saved in
``controller/text/``. Output: ``controller/model.safetensors`` (kind ``controller``, ``mode: concat``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mrgen.config import Config
from mrgen.contract import config_of

STAGE = "controller"


def run(cfg: Config) -> dict:
    from mrgen import train
    from mrgen.autoencoder.data import Items, data_hash, label_names, n_labels, no_organ_prompt, open_index, target_items
    from mrgen.controller import Generator, render_mask
    from mrgen.diffusion import make_train_scheduler
    from mrgen.ldm import Conditioner, diffusion_loss
    from mrgen.nets import build_pixel_unet, encode_mask, get_text_encoder, mask_channels
    from mrgen.prompts import build_prompt
    from mrgen.roles import assign

    tcfg = cfg.controller.train
    out = cfg.workdir / STAGE
    roles = assign(open_index(cfg), cfg)
    src = sorted(roles.source, key=lambda r: r["id"])
    tgt = sorted(roles.target, key=lambda r: r["id"])
    labels = n_labels(cfg)
    src_items, tgt_items = Items(cfg, src, with_mask=True), target_items(cfg, tgt)
    src_prompts = [r["prompt"] for r in src]
    tgt_prompts = [no_organ_prompt(r) for r in tgt]
    train.seed_all(tcfg.seed)
    text = get_text_encoder(cfg.text, label_names=label_names(cfg))
    cond = Conditioner(cfg, text, src_prompts + tgt_prompts, folder=out)
    src_ids = torch.tensor([cond.pos[p] for p in src_prompts], dtype=torch.long)
    tgt_ids = torch.tensor([cond.pos[p] for p in tgt_prompts], dtype=torch.long)
    unet = build_pixel_unet(cfg, text.dim, labels)
    sched = make_train_scheduler(cfg.diffusion)
    frac = float(cfg.controller.target_fraction)

    def batch_fn(step, draw):
        k_tgt = int(round(draw.size * frac)) if tgt else 0
        i_s = draw(len(src), draw.size - k_tgt, salt=1)
        x, masks, ids = src_items.images(i_s), src_items.masks(i_s), src_ids[i_s]
        if k_tgt:
            i_t = draw(len(tgt), k_tgt, salt=2)
            x = torch.cat([x, tgt_items.images(i_t)])
            masks = torch.cat([masks, tgt_items.masks(i_t)])
            ids = torch.cat([ids, tgt_ids[i_t]])
        ids = torch.where(torch.rand(len(ids)) < cfg.ldm.prompt_dropout, torch.zeros_like(ids), ids)
        return x, ids, encode_mask(masks, cfg.controller.mask_encoding, labels)

    def loss_fn(batch, step):
        x, ids, c = batch
        dev = next(unet.parameters()).device
        return diffusion_loss(unet, sched, x.to(dev), cond.context(ids, dev), cond=c.to(dev))

    shown = [i for i, r in enumerate(src) if r.get("organs")][:4] or list(range(min(4, len(src))))

    def preview_fn(path, step):
        gen = Generator(cfg, None, unet, None, text, 1.0, labels, {})
        masks = src_items.masks(torch.tensor(shown))
        texts = [build_prompt(cfg.run.target_modality, src[i].get("region") or None, list(src[i]["organs"])) for i in shown]
        imgs = gen.generate(masks, texts, list(range(len(shown))), cfg.sample.guidance, min(cfg.sample.ddim_steps, 25),
                            cfg.controller.conditioning_scale, 0.0)
        train.save_grid(path, [render_mask(masks, labels), src_items.images(torch.tensor(shown)), imgs])

    meta = {"config": config_of(cfg, STAGE), "data_hash": data_hash(src + tgt, cfg, "concat"), "mode": "concat",
            "n_labels": labels, "mask_encoding": cfg.controller.mask_encoding, "in_channels": 1 + mask_channels(cfg, labels),
            "context_dim": text.dim, "text": text.meta(), "source_items": len(src), "target_items": len(tgt),
            "target_fraction": frac, "prompt_dropout": cfg.ldm.prompt_dropout}
    modules, trainable = {"unet": unet}, ["unet"]
    if text.trainable:
        modules["text"] = text
        trainable.append("text")
    export = {"unet": ("", STAGE), **({"text": ("text", "text")} if text.trainable else {})}
    return train.fit(STAGE, out, modules, trainable, loss_fn, batch_fn, tcfg, meta, preview_fn=preview_fn,
                     export=export, device=cfg.run.device)


def load(workdir, cfg: Config, cmeta: dict):
    """The concat :class:`~mrgen.controller.Generator` from ``<workdir>/controller`` (EMA weights, eval, frozen)."""
    from mrgen.autoencoder.data import label_names
    from mrgen.controller import Generator
    from mrgen.nets import build_pixel_unet, get_text_encoder, load_model

    device = cfg.run.device
    folder = Path(workdir) / STAGE
    tmeta = cmeta.get("text", {})
    if tmeta.get("encoder", cfg.text.encoder) != cfg.text.encoder:
        raise ValueError(f"{folder} was trained with text.encoder={tmeta['encoder']}, config says {cfg.text.encoder}; "
                         f"set text.encoder={tmeta['encoder']}")
    text = get_text_encoder(cfg.text, label_names=label_names(cfg), vocab=tmeta.get("vocab"))
    hashes = {"controller": cmeta.get("sha256", "")}
    if text.trainable:
        hashes["text"] = load_model(folder / "text", text, kind="text").get("sha256", "")
        text.to(device).eval().requires_grad_(False)
    labels = int(cmeta["n_labels"])
    unet = build_pixel_unet(cfg, text.dim, labels)
    load_model(folder, unet, kind=STAGE)
    unet.to(device).eval().requires_grad_(False)
    return Generator(cfg, None, unet, None, text, 1.0, labels, hashes)
