"""``mrgen train controller``: mask-conditioned finetuning (MRGen Sec. 4.2-4.3) and the generator.

The controller (a ControlNet: learnable mask downsampling + a copy of the LDM UNet's encoder +
zero convolutions, :func:`mrgen.nets.build_controller`) is the only thing trained; autoencoder,
UNet and text encoder stay frozen. Each batch mixes (``controller.target_fraction``):

* source-modality train items WITH masks (:func:`mrgen.roles.assign` ``.source``): prompt with
  organs, mask encoded by ``controller.mask_encoding``;
* target-modality train items WITHOUT masks (``.target``; their segmentation labels are never
  read): an all-zero mask, or with ``controller.target_context`` only their context labels (the
  brain outline of BraTS: :func:`mrgen.autoencoder.data.target_items`), and the prompt without organs.

Prompts are dropped to the empty prompt with probability ``ldm.prompt_dropout``
(:mod:`mrgen.controller.batches` builds these batches for both modes). Loss: ε-MSE of a
:class:`mrgen.nets.ControlledUNet` (residual scale 1 in training).
:func:`load_generator` bundles the trained parts for ``mrgen synthesize``: a
:class:`~mrgen.controller.render.LatentRenderer`.

``controller.mode=concat`` trains the Med-DDPM renderer instead (pixel space, mask concatenated
to the UNet input, no autoencoder/LDM): :mod:`mrgen.controller.concat`, same batch mix, a
:class:`~mrgen.controller.render.PixelRenderer` with the same ``generate`` interface.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mrgen import devices, io
from mrgen.autoencoder.data import data_hash
from mrgen.config import Config
from mrgen.contract import config_of
from mrgen.controller.render import LatentRenderer, PixelRenderer, Renderer, render_mask

STAGE = "controller"
__all__ = ["STAGE", "LatentRenderer", "PixelRenderer", "Renderer", "load_generator", "render_mask", "run"]




def run(cfg: Config) -> dict:
    if cfg.controller.mode == "concat":
        from mrgen.controller import concat

        return concat.run(cfg)
    from mrgen import train
    from mrgen.autoencoder import load_autoencoder
    from mrgen.controller.batches import load_mix, mixed_batch
    from mrgen.controller.render import save_preview
    from mrgen.diffusion import make_train_scheduler
    from mrgen.ldm import Conditioner, cached_latents, diffusion_loss, load_ldm
    from mrgen.nets import ControlledUNet, build_controller

    tcfg = cfg.controller.train
    device = devices.of(cfg)
    ae, ae_meta = load_autoencoder(cfg.workdir, cfg, device)
    unet, text, ldm_meta = load_ldm(cfg.workdir, cfg, device)
    scale = float(ldm_meta["scale_factor"])
    mix = load_mix(cfg)
    src, tgt, labels = mix.src, mix.tgt, mix.labels
    src_mu, src_sigma = cached_latents(cfg, ae, ae_meta, src, items=mix.src_items)
    tgt_mu, tgt_sigma = cached_latents(cfg, ae, ae_meta, tgt, items=mix.tgt_items)
    cond = Conditioner(cfg, text, mix.src_prompts + mix.tgt_prompts)
    sides = mix.sides(cond, lambda i: (src_mu[i], src_sigma[i]), lambda i: (tgt_mu[i], tgt_sigma[i]))
    train.seed_all(tcfg.seed)
    ctrl = build_controller(cfg, unet, labels)
    den = ControlledUNet(unet, ctrl, 1.0)  # trained at full residual strength; controller.conditioning_scale is for rendering
    sched = make_train_scheduler(cfg.diffusion)
    frac = float(cfg.controller.target_fraction)

    def latents(mu, sigma):  # a fresh posterior sample per step
        return (mu + sigma * torch.randn_like(sigma)) * scale

    def batch_fn(step, draw):
        return mixed_batch(draw, *sides, frac, cfg.ldm.prompt_dropout, cfg.controller.mask_encoding, labels, latents,
                           cfg.controller.target_mask)

    def loss_fn(batch, step):
        z, ids, c = batch
        dev = next(ctrl.parameters()).device
        return diffusion_loss(den, sched, z.to(dev), cond.context(ids, dev), cond=c.to(dev))

    def preview_fn(path, step):
        render = ControlledUNet(unet, ctrl, cfg.controller.conditioning_scale)
        save_preview(path, cfg, mix, LatentRenderer(cfg, ae, render, text, scale, labels, {}))

    pseudo = io.file_hash(cfg.controller.pseudo_labels) if cfg.controller.pseudo_labels else ""
    meta = {"config": config_of(cfg, STAGE), "data_hash": data_hash(src + tgt, cfg, ldm_meta.get("sha256", ""), *([pseudo] if pseudo else [])),
            "pseudo_items": mix.pseudo, "pseudo_sha256": pseudo,
            "mode": "controlnet", "n_labels": labels, "mask_encoding": cfg.controller.mask_encoding, "scale_factor": scale,
            "ldm_sha256": ldm_meta.get("sha256", ""), "autoencoder_sha256": ae_meta.get("sha256", ""),
            "source_items": len(src) - mix.pseudo, "target_items": len(tgt), "target_fraction": frac}
    modules = {"controller": ctrl, "unet": unet, "autoencoder": ae}
    if text.trainable:
        modules["text"] = text
    return train.fit(train.Job(STAGE, cfg.workdir / STAGE, modules, ["controller"], batch_fn, loss_fn, tcfg, meta,
                               preview=preview_fn, device=device))


def load_generator(workdir, cfg: Config) -> Renderer:
    """The trained chain from ``workdir`` (raises when a stage is missing or its config differs).

    Dispatches on the mode saved in ``controller/model.json`` (absent = ``controlnet``): ``concat``
    loads only the pixel UNet (+ a learned text encoder) into a :class:`PixelRenderer`,
    ``controlnet`` autoencoder + LDM + controller into a :class:`LatentRenderer` whose
    ControlledUNet scales the residuals by ``cfg.controller.conditioning_scale``.
    """
    from mrgen.autoencoder import load_autoencoder
    from mrgen.ldm import load_ldm
    from mrgen.nets import ControlledUNet, build_controller, load_model, read_meta

    device = devices.of(cfg)
    folder = Path(workdir) / STAGE
    cmeta = read_meta(folder)
    mode = cmeta.get("mode", "controlnet")
    if mode != cfg.controller.mode:
        raise ValueError(f"{folder} holds a controller.mode={mode} renderer, config says {cfg.controller.mode}; "
                         f"set controller.mode={mode} (or retrain the controller stage)")
    if cmeta.get("mask_encoding", cfg.controller.mask_encoding) != cfg.controller.mask_encoding:
        raise ValueError(f"controller was trained with mask_encoding={cmeta['mask_encoding']}, config says "
                         f"{cfg.controller.mask_encoding}; set controller.mask_encoding={cmeta['mask_encoding']}")
    if mode == "concat":
        from mrgen.controller import concat

        return concat.load(workdir, cfg, cmeta)
    ae, ae_meta = load_autoencoder(workdir, cfg, device)
    unet, text, ldm_meta = load_ldm(workdir, cfg, device)
    if cmeta.get("ldm_sha256") and cmeta["ldm_sha256"] != ldm_meta.get("sha256"):
        raise ValueError(f"{folder} was trained on another LDM than {Path(workdir) / 'ldm'}; retrain the controller")
    labels = int(cmeta["n_labels"])
    ctrl = build_controller(cfg, unet, labels, copy_weights=False)
    load_model(folder, ctrl, kind=STAGE)
    ctrl.to(device).eval().requires_grad_(False)
    hashes = {"autoencoder": ae_meta.get("sha256", ""), "ldm": ldm_meta.get("sha256", ""), "controller": cmeta.get("sha256", "")}
    if text.trainable:
        hashes["text"] = read_meta(Path(workdir) / "ldm" / "text").get("sha256", "")
    den = ControlledUNet(unet, ctrl, cfg.controller.conditioning_scale)
    return LatentRenderer(cfg, ae, den, text, float(ldm_meta["scale_factor"]), labels, hashes)
