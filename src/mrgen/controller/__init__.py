"""``mrgen train controller``: mask-conditioned finetuning (MRGen Sec. 4.2-4.3) and the generator.

The controller (a ControlNet: learnable mask downsampling + a copy of the LDM UNet's encoder +
zero convolutions, :func:`mrgen.nets.build_controller`) is the only thing trained; autoencoder,
UNet and text encoder stay frozen. Each batch mixes (``controller.target_fraction``):

* source-modality train items WITH masks (:func:`mrgen.roles.assign` ``.source``): prompt with
  organs, mask encoded by ``controller.mask_encoding``;
* target-modality train items WITHOUT masks (``.target``; their segmentation labels are never
  read): an all-zero mask, or with ``controller.target_context`` only their context labels (the
  brain outline of BraTS: :func:`mrgen.autoencoder.data.target_items`), and the prompt without organs.

Prompts are dropped to the empty prompt with probability ``ldm.prompt_dropout``. Loss: ε-MSE.
:func:`load_generator` bundles the trained parts for ``mrgen synthesize``.

``controller.mode=concat`` trains the Med-DDPM renderer instead (pixel space, mask concatenated
to the UNet input, no autoencoder/LDM): :mod:`mrgen.controller.concat`, same batch mix, same
:class:`Generator` interface.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mrgen.autoencoder.data import Items, data_hash, item_shape, n_labels, no_organ_prompt, open_index, target_items
from mrgen.config import Config
from mrgen.contract import config_of
from mrgen.prompts import EMPTY_PROMPT, build_prompt

STAGE = "controller"


def render_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    """Label map ``(N, *S)`` -> ``(N, 1, *S)`` in [-1, 1] for preview grids."""
    return mask.float().unsqueeze(1) / max(n, 1) * 2 - 1


def run(cfg: Config) -> dict:
    if cfg.controller.mode == "concat":
        from mrgen.controller import concat

        return concat.run(cfg)
    from mrgen import train
    from mrgen.autoencoder import load_autoencoder
    from mrgen.ldm import Conditioner, cached_latents, diffusion_loss, load_ldm
    from mrgen.nets import build_controller, encode_mask
    from mrgen.roles import assign

    tcfg = cfg.controller.train
    device = cfg.run.device
    ae, ae_meta = load_autoencoder(cfg.workdir, cfg, device)
    unet, text, ldm_meta = load_ldm(cfg.workdir, cfg, device)
    scale = float(ldm_meta["scale_factor"])
    roles = assign(open_index(cfg), cfg)
    src = sorted(roles.source, key=lambda r: r["id"])
    tgt = sorted(roles.target, key=lambda r: r["id"])
    labels = n_labels(cfg)
    src_items = Items(cfg, src, with_mask=True)
    src_mu, src_sigma = cached_latents(cfg, ae, ae_meta, src, items=src_items)
    tgt_items = target_items(cfg, tgt)
    tgt_mu, tgt_sigma = cached_latents(cfg, ae, ae_meta, tgt, items=tgt_items)
    src_prompts = [r["prompt"] for r in src]
    tgt_prompts = [no_organ_prompt(r) for r in tgt]
    cond = Conditioner(cfg, text, src_prompts + tgt_prompts)
    src_ids = torch.tensor([cond.pos[p] for p in src_prompts], dtype=torch.long)
    tgt_ids = torch.tensor([cond.pos[p] for p in tgt_prompts], dtype=torch.long)
    train.seed_all(tcfg.seed)
    ctrl = build_controller(cfg, unet, labels)
    from mrgen.diffusion import make_train_scheduler

    sched = make_train_scheduler(cfg.diffusion)
    frac = float(cfg.controller.target_fraction)

    def batch_fn(step, draw):
        k_tgt = int(round(draw.size * frac)) if tgt else 0
        i_s, i_t = draw(len(src), draw.size - k_tgt, salt=1), draw(len(tgt), k_tgt, salt=2) if k_tgt else None
        mu = [src_mu[i_s]] + ([tgt_mu[i_t]] if k_tgt else [])
        sigma = [src_sigma[i_s]] + ([tgt_sigma[i_t]] if k_tgt else [])
        mu, sigma = torch.cat(mu), torch.cat(sigma)
        z = (mu + sigma * torch.randn_like(sigma)) * scale
        masks = src_items.masks(i_s)
        if k_tgt:
            masks = torch.cat([masks, tgt_items.masks(i_t)])
        ids = torch.cat([src_ids[i_s]] + ([tgt_ids[i_t]] if k_tgt else []))
        ids = torch.where(torch.rand(len(ids)) < cfg.ldm.prompt_dropout, torch.zeros_like(ids), ids)
        return z, ids, encode_mask(masks, cfg.controller.mask_encoding, labels)

    def loss_fn(batch, step):
        z, ids, c = batch
        dev = next(ctrl.parameters()).device
        return diffusion_loss(unet, sched, z.to(dev), cond.context(ids, dev), controller=ctrl, cond=c.to(dev))

    shown = [i for i, r in enumerate(src) if r.get("organs")][:4] or list(range(min(4, len(src))))

    def preview_fn(path, step):
        gen = Generator(cfg, ae, unet, ctrl, text, scale, labels, {})
        masks = src_items.masks(torch.tensor(shown))
        texts = [build_prompt(cfg.run.target_modality, src[i].get("region") or None, list(src[i]["organs"])) for i in shown]
        imgs = gen.generate(masks, texts, list(range(len(shown))), cfg.sample.guidance, min(cfg.sample.ddim_steps, 25),
                            cfg.controller.conditioning_scale, 0.0)
        train.save_grid(path, [render_mask(masks, labels), src_items.images(torch.tensor(shown)), imgs])

    meta = {"config": config_of(cfg, STAGE), "data_hash": data_hash(src + tgt, cfg, ldm_meta.get("sha256", "")),
            "mode": "controlnet", "n_labels": labels, "mask_encoding": cfg.controller.mask_encoding, "scale_factor": scale,
            "ldm_sha256": ldm_meta.get("sha256", ""), "autoencoder_sha256": ae_meta.get("sha256", ""),
            "source_items": len(src), "target_items": len(tgt), "target_fraction": frac}
    modules = {"controller": ctrl, "unet": unet, "autoencoder": ae}
    if text.trainable:
        modules["text"] = text
    return train.fit(STAGE, cfg.workdir / STAGE, modules, ["controller"], loss_fn, batch_fn, tcfg, meta,
                     preview_fn=preview_fn, device=device)


class Generator:
    """Frozen autoencoder + UNet + controller + text encoder; :meth:`generate` renders masks.

    Concat mode (Med-DDPM): ``autoencoder`` and ``controller`` are None and ``unet`` is the pixel UNet
    (:func:`mrgen.nets.build_pixel_unet`); sampling runs in pixel space and nothing is decoded.
    """

    def __init__(self, cfg: Config, autoencoder, unet, controller, text, scale_factor: float, n_labels: int, hashes: dict):
        self.cfg, self.autoencoder, self.unet, self.controller, self.text = cfg, autoencoder, unet, controller, text
        self.scale_factor, self.n_labels, self.hashes = float(scale_factor), int(n_labels), dict(hashes)
        from mrgen.nets import is_concat

        self.mode = "concat" if is_concat(unet) else "controlnet"

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def generate(self, masks: torch.Tensor, prompts: list[str], seeds: list[int], guidance: float = 7.0,
                 steps: int = 50, cond_scale: float = 1.0, eta: float = 0.0) -> torch.Tensor:
        """Label maps ``(N, *S)`` (``S`` = the item shape, e.g. ``(H, W)``) + prompts + seeds ->
        images ``(N, 1, *S)`` float32 in [-1, 1] on the CPU. Sample ``i`` depends only on its own
        mask, prompt and seed (DDIM, classifier-free guidance with the empty prompt). ``cond_scale``
        scales the ControlNet residuals; the concat renderer has none and ignores it."""
        from mrgen.diffusion import decode, make_ddim, sample
        from mrgen.nets import encode_mask, latent_factor

        n = len(seeds)
        if masks.shape[0] != n or len(prompts) != n:
            raise ValueError(f"generate needs one mask, prompt and seed per image: got {masks.shape[0]}, {len(prompts)}, {n}")
        spatial = tuple(masks.shape[1:])
        if spatial != item_shape(self.cfg):
            raise ValueError(f"mask shape {spatial} != the trained item shape {item_shape(self.cfg)} (data.* config)")
        dev = self.device
        cond = encode_mask(masks.long(), self.cfg.controller.mask_encoding, self.n_labels).to(dev)
        ctx = self.text.encode(list(prompts), device=dev).float()
        unc = self.text.encode([EMPTY_PROMPT], device=dev).float()
        if self.mode == "concat":  # pixel space: the mask is part of the UNet input, nothing to decode
            img = sample(self.unet, make_ddim(self.cfg.diffusion, steps), ctx, unc, (n, 1, *spatial), list(seeds), guidance,
                         cond=cond, eta=eta)
            return img.float().clamp(-1, 1).cpu()
        f = latent_factor(self.cfg)
        shape = (n, self.cfg.autoencoder.latent_channels, *[s // f for s in spatial])
        lat = sample(self.unet, make_ddim(self.cfg.diffusion, steps), ctx, unc, shape, list(seeds), guidance,
                     controller=self.controller, cond=cond, cond_scale=cond_scale, eta=eta)
        return decode(self.autoencoder, lat, self.scale_factor).float().clamp(-1, 1).cpu()


def load_generator(workdir, cfg: Config) -> Generator:
    """The trained chain from ``workdir`` (raises when a stage is missing or its config differs).

    Dispatches on the mode saved in ``controller/model.json`` (absent = ``controlnet``): ``concat``
    loads only the pixel UNet (+ a learned text encoder), ``controlnet`` autoencoder + LDM + controller.
    """
    from mrgen.autoencoder import load_autoencoder
    from mrgen.ldm import load_ldm
    from mrgen.nets import build_controller, load_model, read_meta

    device = cfg.run.device
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
    return Generator(cfg, ae, unet, ctrl, text, float(ldm_meta["scale_factor"]), labels, hashes)
