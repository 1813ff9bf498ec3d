"""Training (label autoencoder, then label LDM) and generation for ``mrgen labelgen``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mrgen import devices, io, labelmaps, seeds
from mrgen.config import Config
from mrgen.contract import config_of
from mrgen.labelgen import (STAGE, LabelItems, build_label_autoencoder, build_label_unet, decode_labels, encode_labels,
                            label_prompt, latent_shape, recon_loss, train_rows)
from mrgen.labelmaps import load_labels, organs_in, save_labels
from mrgen.nets import UNetDenoiser

AE, LDM, LABELS = "autoencoder", "ldm", "labels"


def _folder(cfg: Config) -> Path:
    return cfg.workdir / STAGE


def _text(cfg: Config, vocab=None):
    from mrgen.autoencoder.data import label_names
    from mrgen.nets import get_text_encoder

    return get_text_encoder(cfg.text, label_names=label_names(cfg), vocab=vocab)


def train_autoencoder(cfg: Config, rows: list[dict], items: LabelItems) -> dict:
    from mrgen import train
    from mrgen.autoencoder import kl_loss, scale_factor
    from mrgen.autoencoder.data import data_hash

    tcfg, k, enc = cfg.labelgen.ae_train, items.k, cfg.labelgen.encoding
    train.seed_all(tcfg.seed)
    ae = build_label_autoencoder(cfg, k)
    kl_w = float(cfg.autoencoder.kl_weight)
    fixed = torch.arange(min(4, len(items)))

    def batch_fn(step, draw):
        return items.masks(draw(len(items)))

    def loss_fn(mask, step):
        dev = next(ae.parameters()).device
        mask = mask.to(dev)
        x = encode_labels(mask, k, enc)
        logits, mu, sigma = ae(x)
        return recon_loss(logits, mask, k, enc) + kl_w * kl_loss(mu, sigma)

    def preview_fn(path, step):
        m = items.masks(fixed)
        rec = decode_labels(ae.reconstruct(items.images(fixed).to(next(ae.parameters()).device)).float(), k, enc).cpu()
        train.save_grid(path, [m.float().unsqueeze(1) / k * 2 - 1, rec.float().unsqueeze(1) / k * 2 - 1])

    def finalize(modules):
        return {"scale_factor": scale_factor(modules["autoencoder"], items, seed=tcfg.seed)}

    meta = {"config": config_of(cfg, STAGE), "data_hash": data_hash(rows, cfg, "labels"), "n_labels": k, "encoding": enc,
            "n_items": len(rows)}
    return train.fit(train.Job(f"{STAGE}-autoencoder", _folder(cfg) / AE, {"autoencoder": ae}, ["autoencoder"],
                               batch_fn, loss_fn, tcfg, meta, preview=preview_fn, finalize=finalize,
                               export={"autoencoder": ("", AE)}, device=devices.of(cfg)))


def load_label_autoencoder(cfg: Config, k: int, device: str = "cpu"):
    from mrgen.nets import load_model

    ae = build_label_autoencoder(cfg, k)
    meta = load_model(_folder(cfg) / AE, ae, kind=AE)
    return ae.to(device).eval().requires_grad_(False), meta


def train_ldm(cfg: Config, rows: list[dict], items: LabelItems) -> dict:
    from mrgen import train
    from mrgen.autoencoder.data import data_hash
    from mrgen.diffusion import make_train_scheduler
    from mrgen.ldm import diffusion_loss, drop_prompts, encode_posterior
    from mrgen.prompts import EMPTY_PROMPT

    tcfg = cfg.labelgen.ldm_train
    ae, ae_meta = load_label_autoencoder(cfg, items.k, devices.of(cfg))
    scale = float(ae_meta["scale_factor"])
    mu, sigma = encode_posterior(ae, items)
    prompts = [label_prompt(r["region"] or None, list(r["organs"])) for r in rows]
    bank = [EMPTY_PROMPT, *sorted(set(prompts))]
    pos = {p: i for i, p in enumerate(bank)}
    ids = torch.tensor([pos[p] for p in prompts], dtype=torch.long)
    train.seed_all(tcfg.seed)
    text = _text(cfg)
    frozen = None if text.trainable else text.encode(bank).float().cpu()
    unet = build_label_unet(cfg, text.dim)
    denoiser = UNetDenoiser(unet)
    sched = make_train_scheduler(cfg.diffusion)
    modules, trainable = {"unet": unet, "autoencoder": ae}, ["unet"]
    if text.trainable:
        modules["text"], trainable = text, ["unet", "text"]

    def context(sel: torch.Tensor, dev) -> torch.Tensor:
        return frozen[sel].to(dev) if frozen is not None else text.encode([bank[i] for i in sel.tolist()], device=dev)

    def batch_fn(step, draw):
        idx = draw(len(rows))
        z = (mu[idx] + sigma[idx] * torch.randn_like(sigma[idx])) * scale
        keep = ids[idx]
        return z, drop_prompts(keep, cfg.ldm.prompt_dropout)

    def loss_fn(batch, step):
        z, sel = batch
        dev = next(unet.parameters()).device
        return diffusion_loss(denoiser, sched, z.to(dev), context(sel, dev))

    meta = {"config": config_of(cfg, STAGE), "data_hash": data_hash(rows, cfg, "labels", ae_meta.get("sha256", "")),
            "scale_factor": scale, "context_dim": text.dim, "text": text.meta(), "n_labels": items.k,
            "autoencoder_sha256": ae_meta.get("sha256", ""), "prompts": bank[1:], "prompt_counts":
            {p: prompts.count(p) for p in bank[1:]}}
    export = {"unet": ("", LDM), **({"text": ("text", "text")} if text.trainable else {})}
    return train.fit(train.Job(f"{STAGE}-ldm", _folder(cfg) / LDM, modules, trainable, batch_fn, loss_fn, tcfg, meta,
                               export=export, device=devices.of(cfg)))


class LabelGenerator:
    """The trained label autoencoder + LDM + text encoder; :meth:`generate` samples label maps."""

    def __init__(self, cfg: Config, device: str = "cpu"):
        from mrgen.nets import load_model, read_meta

        folder = _folder(cfg)
        self.cfg, self.meta = cfg, read_meta(folder / LDM)
        self.k = int(self.meta["n_labels"])
        self.ae, ae_meta = load_label_autoencoder(cfg, self.k, device)
        self.text = _text(cfg, vocab=self.meta.get("text", {}).get("vocab"))
        if self.text.trainable:
            load_model(folder / LDM / "text", self.text, kind="text")
            self.text.to(device).eval().requires_grad_(False)
        self.unet = build_label_unet(cfg, self.text.dim)
        load_model(folder / LDM, self.unet, kind=LDM)
        self.unet.to(device).eval().requires_grad_(False)
        self.scale = float(self.meta["scale_factor"])
        self.hashes = {"label_autoencoder": ae_meta.get("sha256", ""), "label_ldm": self.meta.get("sha256", "")}
        if self.text.trainable:
            self.hashes["label_text"] = read_meta(folder / LDM / "text").get("sha256", "")

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], guidance: float, steps: int) -> torch.Tensor:
        """One label map ``(N, *S)`` long per (prompt, seed)."""
        from mrgen.diffusion import decode, make_ddim, sample
        from mrgen.prompts import EMPTY_PROMPT

        dev = next(self.unet.parameters()).device
        ctx = self.text.encode(list(prompts), device=dev).float()
        unc = self.text.encode([EMPTY_PROMPT], device=dev).float()
        lat = sample(UNetDenoiser(self.unet), make_ddim(self.cfg.diffusion, steps), ctx, unc, latent_shape(self.cfg, len(seeds)),
                     list(seeds), guidance)
        logits = decode(self.ae, lat, self.scale)
        return decode_labels(logits.float(), self.k, self.cfg.labelgen.encoding).cpu()


def generate(cfg: Config) -> dict:
    """Sample ``labelgen.count`` label maps; skips the ones already written by the same checkpoints."""
    lg = cfg.labelgen
    out = _folder(cfg) / LABELS
    gen = LabelGenerator(cfg, devices.of(cfg))
    counts = gen.meta.get("prompt_counts") or {p: 1 for p in gen.meta["prompts"]}
    bank = sorted(counts)
    weights = np.array([counts[p] for p in bank], float)
    names = labelmaps.label_names(cfg.workdir)
    todo, written = [], 0
    for i in range(lg.count):
        key = f"gen_{i:04d}"
        rng = np.random.default_rng(seeds.derive(lg.seed, key, 0))
        prompt = bank[int(rng.choice(len(bank), p=weights / weights.sum()))]  # the training prompt mix
        f = out / f"{key}.npz"
        if f.exists() and load_labels(f)["meta"].get("checkpoints") == gen.hashes:
            continue
        todo.append((key, prompt, seeds.derive(lg.seed, key, 1)))
    region_of = _region_lookup(cfg)
    for start in range(0, len(todo), max(1, cfg.sample.batch_size)):
        batch = todo[start: start + max(1, cfg.sample.batch_size)]
        maps = gen.generate([b[1] for b in batch], [b[2] for b in batch], lg.guidance, lg.ddim_steps)
        for (key, prompt, seed), m in zip(batch, maps.numpy()):
            meta = {"id": key, "kind": "generated", "seed": seed, "prompt": prompt, "region": region_of.get(prompt, ""),
                    "organs": organs_in(m, names, cfg.curate.min_label_pixels), "guidance": lg.guidance,
                    "ddim_steps": lg.ddim_steps, "checkpoints": dict(gen.hashes)}
            save_labels(out / f"{key}.npz", m, meta)
            written += 1
    return {"generated": written, "kept_from_before": lg.count - written, "folder": str(out)}


def _region_lookup(cfg: Config) -> dict[str, str]:
    """label prompt -> region key, from the training rows."""
    return {label_prompt(r["region"] or None, list(r["organs"])): r["region"] or "" for r in train_rows(cfg)}


def regenerate(cfg: Config, meta: dict, gen: LabelGenerator | None = None) -> np.ndarray:
    """Re-sample one generated label map from its ``meta`` record."""
    gen = gen or LabelGenerator(cfg, devices.of(cfg))
    stale = sorted(k for k, v in meta["checkpoints"].items() if gen.hashes.get(k) != v)
    if stale:
        raise ValueError(f"label checkpoints changed since {meta['id']} was generated: {stale}; rerun `mrgen labelgen`")
    return gen.generate([meta["prompt"]], [meta["seed"]], meta["guidance"], meta["ddim_steps"])[0].numpy()


def statistics(cfg: Config, rows: list[dict], items: LabelItems) -> dict:
    """Per-label voxel fraction, real (training maps) vs generated, and how often a prompted organ is present."""
    names = labelmaps.label_names(cfg.workdir)
    real = items.masks(torch.arange(len(items))).numpy()
    gens = [load_labels(f) for f in sorted((_folder(cfg) / LABELS).glob("gen_*.npz"))]
    out = {"real_maps": len(real), "generated_maps": len(gens), "labels": {}}
    for v, name in sorted(names.items()):
        r = float((real == v).mean())
        g = float(np.mean([(x["mask"] == v).mean() for x in gens])) if gens else float("nan")
        out["labels"][name] = {"real_fraction": r, "generated_fraction": g, "ratio": g / r if r else float("nan")}
    asked = [(set(x["meta"]["prompt"].split("; ")[-1].split(", ")), set(x["meta"]["organs"])) for x in gens]
    hit = [len(a & o) / len(a) for a, o in asked if a]
    out["prompted_organs_present"] = float(np.mean(hit)) if hit else float("nan")
    return out


def figure(cfg: Config, items: LabelItems, n_real: int = 2, n_gen: int = 4) -> Path | None:
    from mrgen.figures import save_ortho_grid

    gens = sorted((_folder(cfg) / LABELS).glob("gen_*.npz"))[:n_gen]
    if not gens:
        return None
    rows = [{"name": f"real {i}", "labels": items.masks(torch.tensor([i]))[0].numpy()} for i in range(min(n_real, len(items)))]
    rows += [{"name": f.stem, "labels": load_labels(f)["mask"]} for f in gens]
    return save_ortho_grid(_folder(cfg) / "labels.png", rows, "labelgen: real training maps vs generated label maps", top=items.k)


def run(cfg: Config) -> dict:
    from mrgen.autoencoder.data import n_labels

    rows = train_rows(cfg)
    items = LabelItems(cfg, rows, n_labels(cfg))
    ae = train_autoencoder(cfg, rows, items)
    ldm = train_ldm(cfg, rows, items)
    gen = generate(cfg)
    stats = statistics(cfg, rows, items)
    fig = figure(cfg, items)
    io.write_json(_folder(cfg) / "stats.json", {"schema": 1, **stats})
    return {"autoencoder_step": ae.get("step"), "ldm_step": ldm.get("step"), **gen,
            "prompted_organs_present": round(stats["prompted_organs_present"], 3), "figure": str(fig) if fig else ""}
