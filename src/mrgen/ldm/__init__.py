"""``mrgen train ldm``: text-guided latent diffusion pretraining (MRGen Sec. 4.2-4.3).

Training items: every train-split item of every modality (source and target, annotated or not).
Prompt: the row's template prompt for annotated rows; for unannotated rows the prompt without
organs (nobody knows which organs they show). With ``run.disjoint_subjects`` the source- and
target-modality series of a subject are used only on the side :func:`mrgen.roles.assign` gave
that subject. Each prompt is replaced by the empty prompt with probability ``ldm.prompt_dropout``
(classifier-free guidance). Loss: ε-prediction MSE on ``scale_factor``-scaled latents, noised by
the 1000-step scaled-linear DDPM (:func:`mrgen.diffusion.make_train_scheduler`).

Caches: ``ldm/latents.safetensors`` (posterior mean/std of every item, keyed by the data hash
and the autoencoder's sha256; a latent is sampled from them per step) and, for frozen text
encoders, ``ldm/text_cache.safetensors`` (one embedding per distinct prompt). A ``learned`` text
encoder trains with the UNet and is saved in ``ldm/text/model.safetensors`` (+ ``model.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from mrgen import devices
from mrgen.autoencoder.data import Items, data_hash, item_shape, kind_of, label_names, no_organ_prompt, open_index
from mrgen.config import Config
from mrgen.contract import config_of
from mrgen.prompts import EMPTY_PROMPT, build_prompt

STAGE = "ldm"
LATENTS = "latents.safetensors"
TEXT_CACHE = "text_cache.safetensors"


def prompt_of(row: dict) -> str:
    return row["prompt"] if row.get("has_mask") else no_organ_prompt(row)


def ldm_rows(cfg: Config) -> list[dict]:
    """The autoencoder's training rows (:func:`mrgen.autoencoder.train_rows`: the train split without the test
    subjects); source/target-modality rows restricted to their role's subjects when disjoint."""
    from mrgen.autoencoder import train_rows
    from mrgen.roles import assign

    rows = train_rows(cfg)
    if cfg.run.disjoint_subjects:
        try:
            roles = assign(open_index(cfg), cfg)
        except ValueError:  # no source/target pair configured: train on everything
            roles = None
        if roles is not None:
            key = lambda r: (r["dataset"], r["subject"])  # noqa: E731
            src, tgt = {key(r) for r in roles.source}, {key(r) for r in roles.target}
            mods = {cfg.run.source_modality: tgt - src, cfg.run.target_modality: src - tgt}
            rows = [r for r in rows if key(r) not in mods.get(r["modality"], set())]
    return sorted(rows, key=lambda r: r["id"])


def keyed_cache(path: Path, tag: str, keys: list[str], compute, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Rows of named tensors for ``keys`` from a safetensors file tagged ``tag``; ``compute(missing_keys)``
    -> ``{name: (len(missing), ...)}`` fills the gaps and the file is rewritten with the union."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mrgen import io

    from mrgen.dist import state as process_state

    state = process_state(device)
    have: dict[str, torch.Tensor] = {}
    old_keys: list[str] = []
    if path.exists():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("tag") == tag:
                old_keys = json.loads(meta["keys"])
                have = {name: f.get_tensor(name) for name in f.keys()}
    state.wait_for_everyone()  # every process has read the same file before anyone rewrites it
    pos = {k: i for i, k in enumerate(old_keys)}
    missing = [k for k in dict.fromkeys(keys) if k not in pos]
    if missing:
        new = compute(missing)
        have = {n: torch.cat([have[n], t.float().cpu()]) if n in have else t.float().cpu() for n, t in new.items()}
        old_keys = old_keys + missing
        pos = {k: i for i, k in enumerate(old_keys)}
        if state.is_main_process:
            with io.atomic_path(path, suffix=".safetensors") as tmp:
                save_file({n: t.contiguous() for n, t in have.items()}, str(tmp), metadata={"tag": tag, "keys": json.dumps(old_keys)})
    state.wait_for_everyone()
    sel = torch.tensor([pos[k] for k in keys], dtype=torch.long)
    return {n: t[sel] for n, t in have.items()}


@torch.no_grad()
def encode_posterior(ae, items: Items, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(ae.parameters()).device
    mus, sigmas = [], []
    for chunk in torch.arange(len(items)).split(batch):
        mu, sigma = ae.encode(items.images(chunk).to(device))
        mus.append(mu.float().cpu())
        sigmas.append(sigma.float().cpu())
    return torch.cat(mus), torch.cat(sigmas)


def cached_latents(cfg: Config, ae, ae_meta: dict, rows: list[dict], items: Items | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior ``(mu, sigma)`` of ``rows``, cached in ``ldm/latents.safetensors`` (keyed by row id + content
    hash, tagged with the autoencoder's sha256 and the item shape); only missing rows are encoded."""
    by_key = {f"{r['id']}|{r.get('hash', '')}": i for i, r in enumerate(rows)}

    def compute(missing):
        sub = [rows[by_key[k]] for k in missing]
        it = Items(cfg, sub) if items is None or len(missing) != len(rows) else items
        mu, sigma = encode_posterior(ae, it)
        return {"mu": mu, "sigma": sigma}

    tag = json.dumps({"ae": ae_meta.get("sha256", ""), "shape": list(item_shape(cfg))})
    out = keyed_cache(cfg.workdir / STAGE / LATENTS, tag, list(by_key), compute, devices.of(cfg))
    return out["mu"], out["sigma"]


def text_bank(cfg: Config, text, prompts: list[str], folder: Path | None = None) -> torch.Tensor:
    """``(P, L, dim)`` embeddings of ``prompts`` from a frozen encoder, cached in ``<folder>/text_cache.safetensors``
    (default ``<workdir>/ldm``; the concat renderer, which has no LDM, uses ``<workdir>/controller``)."""

    def compute(missing):
        return {"emb": torch.cat([text.encode(missing[i : i + 64]).float().cpu() for i in range(0, len(missing), 64)])}

    tag = json.dumps(text.meta(), sort_keys=True)
    folder = Path(folder) if folder is not None else cfg.workdir / STAGE
    return keyed_cache(folder / TEXT_CACHE, tag, list(prompts), compute, devices.of(cfg))["emb"]


def drop_prompts(ids: torch.Tensor, dropout: float) -> torch.Tensor:
    """Prompt ids ``(N,)`` long -> the same with each replaced by 0 (the empty prompt) with probability
    ``dropout``: the classifier-free-guidance dropout of every diffusion stage. Draws ``torch.rand(N)``
    from the global RNG (seeded per step by :func:`mrgen.train.fit`), one call per batch."""
    return torch.where(torch.rand(len(ids)) < dropout, torch.zeros_like(ids), ids)


class Conditioner:
    """Prompt -> context for training: a lookup into a frozen bank, or the learned encoder (differentiable).
    ``pos`` maps a prompt to its id (0 = the empty prompt; :func:`drop_prompts`).
    ``folder`` holds the frozen bank's cache (:func:`text_bank`; default ``<workdir>/ldm``)."""

    def __init__(self, cfg: Config, text, prompts: list[str], folder: Path | None = None):
        self.text, self.prompts = text, list(dict.fromkeys([EMPTY_PROMPT, *sorted(set(prompts))]))
        self.pos = {p: i for i, p in enumerate(self.prompts)}
        self.bank = None if text.trainable else text_bank(cfg, text, self.prompts, folder)

    def ids(self, prompts: list[str]) -> torch.Tensor:
        """``(len(prompts),)`` long ids of ``prompts`` (each must be one the conditioner was built with)."""
        return torch.tensor([self.pos[p] for p in prompts], dtype=torch.long)

    def context(self, ids: torch.Tensor, device) -> torch.Tensor:
        """Ids ``(N,)`` -> text context ``(N, L, dim)`` on ``device``."""
        if self.bank is not None:
            return self.bank[ids].to(device)
        return self.text.encode([self.prompts[i] for i in ids.tolist()], device=device)


def diffusion_loss(denoiser, sched, z: torch.Tensor, context: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """ε-prediction MSE at uniformly drawn timesteps: ``denoiser`` (:mod:`mrgen.nets.denoisers`; a bare UNet is
    ``UNetDenoiser(unet)``) sees ``x_t`` of ``z`` ``(N, C, *s)`` with ``context`` ``(N, L, dim)`` and ``cond``.
    Global RNG draws, in this order: ``torch.randint`` (t), ``torch.randn_like(z)`` (noise)."""
    from mrgen.nets import as_denoiser

    denoiser = as_denoiser(denoiser)
    t = torch.randint(0, sched.num_train_timesteps, (z.shape[0],), device=z.device)
    noise = torch.randn_like(z)
    zt = sched.add_noise(original_samples=z, noise=noise, timesteps=t)
    eps = denoiser.eps(zt, t, context, cond)
    return F.mse_loss(eps.float(), noise)


def preview_prompts(cfg: Config, rows: list[dict], n: int = 4) -> list[str]:
    """One prompt per modality (with organs where known), target modality first."""
    by_mod: dict[str, str] = {}
    for r in sorted(rows, key=lambda r: (not r.get("organs"), r["id"])):
        by_mod.setdefault(r["modality"], prompt_of(r))
    mods = sorted(by_mod, key=lambda m: (m != cfg.run.target_modality, m != cfg.run.source_modality, m))
    out = [by_mod[m] for m in mods][:n]
    src = [r for r in rows if r["modality"] == cfg.run.source_modality and r.get("organs")]
    if src and len(out) < n:
        out.append(build_prompt(cfg.run.target_modality, src[0].get("region") or None, list(src[0]["organs"])))
    return out


def run(cfg: Config) -> dict:
    from mrgen import train
    from mrgen.autoencoder import load_autoencoder
    from mrgen.diffusion import decode, make_ddim, make_train_scheduler, sample
    from mrgen.nets import UNetDenoiser, build_unet, get_text_encoder, latent_factor

    tcfg = cfg.ldm.train
    ae, ae_meta = load_autoencoder(cfg.workdir, cfg, devices.of(cfg))
    scale = float(ae_meta["scale_factor"])
    rows = ldm_rows(cfg)
    mu, sigma = cached_latents(cfg, ae, ae_meta, rows)
    prompts = [prompt_of(r) for r in rows]
    train.seed_all(tcfg.seed)
    text = get_text_encoder(cfg.text, label_names=label_names(cfg))
    cond = Conditioner(cfg, text, prompts)
    row_ids = cond.ids(prompts)
    unet = build_unet(cfg, text.dim)
    den = UNetDenoiser(unet)
    sched = make_train_scheduler(cfg.diffusion)
    modules = {"unet": unet, "autoencoder": ae}
    trainable = ["unet"]
    if text.trainable:
        modules["text"] = text
        trainable.append("text")

    def batch_fn(step, draw):
        idx = draw(len(rows))
        z = (mu[idx] + sigma[idx] * torch.randn_like(sigma[idx])) * scale
        return z, drop_prompts(row_ids[idx], cfg.ldm.prompt_dropout)

    def loss_fn(batch, step):
        z, ids = batch
        device = next(unet.parameters()).device
        return diffusion_loss(den, sched, z.to(device), cond.context(ids, device))

    shown = preview_prompts(cfg, rows)

    def preview_fn(path, step):
        device = next(unet.parameters()).device
        ctx = cond.context(torch.tensor([cond.pos.get(p, 0) for p in shown]), device) if cond.bank is not None \
            else text.encode(shown, device=device)
        unc = cond.context(torch.zeros(1, dtype=torch.long), device)
        f = latent_factor(cfg)
        shape = (len(shown), cfg.autoencoder.latent_channels, *[s // f for s in item_shape(cfg)])
        lat = sample(den, make_ddim(cfg.diffusion, min(cfg.sample.ddim_steps, 25)), ctx, unc, shape,
                     list(range(len(shown))), cfg.sample.guidance)
        train.save_grid(path, [decode(ae, lat, scale).clamp(-1, 1)])

    meta = {"config": config_of(cfg, STAGE), "data_hash": data_hash(rows, cfg, ae_meta.get("sha256", "")),
            "scale_factor": scale, "context_dim": text.dim, "text": text.meta(), "autoencoder_sha256": ae_meta.get("sha256", ""),
            "n_items": len(rows), "n_prompts": len(cond.prompts), "prompt_dropout": cfg.ldm.prompt_dropout,
            "preview_prompts": shown}
    export = {"unet": ("", STAGE), **({"text": ("text", "text")} if text.trainable else {})}
    return train.fit(train.Job(STAGE, cfg.workdir / STAGE, modules, trainable, batch_fn, loss_fn, tcfg, meta,
                               preview=preview_fn, export=export, device=devices.of(cfg)))


def load_ldm(workdir, cfg: Config, device: str = "cpu"):
    """``(unet, text_encoder, meta)`` of the trained LDM (EMA weights, eval, frozen)."""
    from mrgen.nets import build_unet, get_text_encoder, load_model, read_meta

    folder = Path(workdir) / STAGE
    meta = read_meta(folder)
    tmeta = meta.get("text", {})
    text = get_text_encoder(cfg.text, label_names=label_names(cfg), vocab=tmeta.get("vocab"))
    if text.trainable:
        load_model(folder / "text", text, kind="text")
        text.to(device).eval().requires_grad_(False)
    unet = build_unet(cfg, text.dim)
    meta = load_model(folder, unet, kind=STAGE)
    unet.to(device).eval().requires_grad_(False)
    return unet, text, meta
