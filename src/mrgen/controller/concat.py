"""``controller.mode=concat``: the Med-DDPM renderer (Dorjsembe et al., 2024), trained from scratch.

A pixel-space DDPM: the UNet (:func:`mrgen.nets.build_pixel_unet`) sees the noisy IMAGE in
[-1, 1] concatenated with the encoded label map (``controller.mask_encoding``) and the prompt
through cross-attention; no autoencoder, no LDM, no ControlNet. Everything else is shared with
the ControlNet mode: the batch mix (source items WITH masks + ``controller.target_fraction``
target-modality items with an all-zero or context-only mask and the prompt without organs), prompt dropout
``ldm.prompt_dropout``, ε-MSE under ``cfg.diffusion``'s schedule, :func:`mrgen.train.fit`
(checkpoints, resume, EMA ``controller.train.ema_decay``, previews), DDIM + CFG sampling with
:func:`mrgen.diffusion.sample` through a :class:`mrgen.nets.ConcatUNet` (renderer:
:class:`~mrgen.controller.render.PixelRenderer`; ``controller.conditioning_scale`` does not apply:
config validation keeps it at 1). Text: a frozen encoder's embeddings are cached in
``controller/text_cache.safetensors``; a ``learned`` encoder trains jointly and is saved in
``controller/text/``. Output: ``controller/model.safetensors`` (kind ``controller``, ``mode: concat``).
"""

from __future__ import annotations

from pathlib import Path

from mrgen import devices
from mrgen.config import Config
from mrgen.contract import config_of

STAGE = "controller"


def run(cfg: Config) -> dict:
    from mrgen import train
    from mrgen.autoencoder.data import data_hash, label_names
    from mrgen.controller.batches import load_mix, mixed_batch
    from mrgen.controller.render import PixelRenderer, save_preview
    from mrgen.diffusion import make_train_scheduler
    from mrgen.ldm import Conditioner, diffusion_loss
    from mrgen.nets import ConcatUNet, build_pixel_unet, get_text_encoder, mask_channels

    tcfg = cfg.controller.train
    out = cfg.workdir / STAGE
    mix = load_mix(cfg)
    src, tgt, labels = mix.src, mix.tgt, mix.labels
    train.seed_all(tcfg.seed)
    text = get_text_encoder(cfg.text, label_names=label_names(cfg))
    cond = Conditioner(cfg, text, mix.src_prompts + mix.tgt_prompts, folder=out)
    sides = mix.sides(cond, lambda i: (mix.src_items.images(i),), lambda i: (mix.tgt_items.images(i),))
    unet = build_pixel_unet(cfg, text.dim, labels)
    den = ConcatUNet(unet, mask_channels(cfg, labels))
    sched = make_train_scheduler(cfg.diffusion)
    frac = float(cfg.controller.target_fraction)

    def batch_fn(step, draw):
        return mixed_batch(draw, *sides, frac, cfg.ldm.prompt_dropout, cfg.controller.mask_encoding, labels,
                           target_mask=cfg.controller.target_mask)

    def loss_fn(batch, step):
        x, ids, c = batch
        dev = next(unet.parameters()).device
        return diffusion_loss(den, sched, x.to(dev), cond.context(ids, dev), cond=c.to(dev))

    def preview_fn(path, step):
        save_preview(path, cfg, mix, PixelRenderer(cfg, den, text, labels, {}))

    meta = {"config": config_of(cfg, STAGE), "data_hash": data_hash(src + tgt, cfg, "concat"), "mode": "concat",
            "n_labels": labels, "mask_encoding": cfg.controller.mask_encoding, "in_channels": 1 + mask_channels(cfg, labels),
            "context_dim": text.dim, "text": text.meta(), "source_items": len(src), "target_items": len(tgt),
            "target_fraction": frac, "prompt_dropout": cfg.ldm.prompt_dropout}
    modules, trainable = {"unet": unet}, ["unet"]
    if text.trainable:
        modules["text"] = text
        trainable.append("text")
    export = {"unet": ("", STAGE), **({"text": ("text", "text")} if text.trainable else {})}
    return train.fit(train.Job(STAGE, out, modules, trainable, batch_fn, loss_fn, tcfg, meta, preview=preview_fn,
                               export=export, device=devices.of(cfg)))


def load(workdir, cfg: Config, cmeta: dict):
    """The :class:`~mrgen.controller.render.PixelRenderer` from ``<workdir>/controller`` (EMA weights, eval, frozen)."""
    from mrgen.autoencoder.data import label_names
    from mrgen.controller.render import PixelRenderer
    from mrgen.nets import ConcatUNet, build_pixel_unet, get_text_encoder, load_model, mask_channels

    device = devices.of(cfg)
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
    return PixelRenderer(cfg, ConcatUNet(unet, mask_channels(cfg, labels)), text, labels, hashes)
