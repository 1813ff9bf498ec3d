"""``mrgen train autoencoder`` / ``mrgen evaluate autoencoder`` (MRGen Sec. 4.3, App. C.1).

The KL autoencoder is trained on every train-split image of the index (all modalities, with
or without masks): loss ``MSE(x, x̂) + kl_weight · KL(q(z|x) || N(0, I))``; augmentation with
probability ``aug_prob``: horizontal/vertical flip or 90/180/270° in-plane rotation. After
training the latent scale factor ``1 / std(z)`` of up to 256 training latents goes into
``autoencoder/model.json`` (``scale_factor``), so the LDM sees unit-variance latents.

:func:`evaluate` reports PSNR, SSIM, L1 and MSE of reconstructions (posterior mean) on the
test split, computed on images mapped to [0, 1] (data range 1), averaged over items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mrgen import devices, io
from mrgen.autoencoder.data import Items, augment, data_hash, kind_of, open_index
from mrgen.config import Config
from mrgen.contract import config_of

STAGE = "autoencoder"
SCALE_ITEMS = 256


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma²) || N(0, 1)) summed over latent elements, averaged over the batch."""
    mu, sigma = mu.float(), sigma.float()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2).clamp_min(1e-12)) - 1)
    return kl.flatten(1).sum(1).mean()


def train_rows(cfg: Config) -> list[dict]:
    from mrgen.roles import unseen_tests

    rows = sorted(unseen_tests(open_index(cfg).query(kind=kind_of(cfg), split="train"), cfg), key=lambda r: r["id"])
    if not rows:
        raise ValueError(f"no {kind_of(cfg)} rows in the train split of {cfg.workdir / 'curated'}; run `mrgen curate` first")
    return rows


@torch.no_grad()
def scale_factor(ae, items: Items, seed: int = 0, n: int = SCALE_ITEMS, batch: int = 32) -> float:
    """``1 / std`` of posterior samples of up to ``n`` items (a seeded subset)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(items), generator=g)[:n]
    device = next(ae.parameters()).device
    zs = []
    for chunk in idx.split(batch):
        mu, sigma = ae.encode(items.images(chunk).to(device))
        zs.append((mu + sigma * torch.randn(mu.shape, generator=g).to(device)).float().cpu())
    std = torch.cat(zs).std().item()
    return float(1.0 / max(std, 1e-6))


def run(cfg: Config) -> dict:
    from mrgen import train
    from mrgen.nets import build_autoencoder

    tcfg = cfg.autoencoder.train
    rows = train_rows(cfg)
    items = Items(cfg, rows)
    train.seed_all(tcfg.seed)
    ae = build_autoencoder(cfg)
    kl_w = float(cfg.autoencoder.kl_weight)
    fixed = torch.linspace(0, len(items) - 1, min(8, len(items))).long()  # spread over the items (not 8 edge slices)

    def batch_fn(step, draw):
        g = torch.Generator().manual_seed(train.step_seed(tcfg.seed, step, draw.rank, "augment"))  # per step: resumable
        return augment(items.images(draw(len(items))), cfg.autoencoder.aug_prob, g)[0]

    def loss_fn(x, step):
        device = next(ae.parameters()).device
        x = x.to(device)
        recon, mu, sigma = ae(x)
        return F.mse_loss(recon.float(), x) + kl_w * kl_loss(mu, sigma)

    def preview_fn(path, step):
        x = items.images(fixed).to(next(ae.parameters()).device)
        train.save_grid(path, [x, ae.reconstruct(x)])

    def finalize(modules):
        return {"scale_factor": scale_factor(modules["autoencoder"], items, seed=tcfg.seed)}

    meta = {"config": config_of(cfg, STAGE), "data_hash": data_hash(rows, cfg), "n_items": len(rows),
            "modalities": sorted({r["modality"] for r in rows})}
    res = train.fit(train.Job(STAGE, cfg.workdir / STAGE, {"autoencoder": ae}, ["autoencoder"], batch_fn, loss_fn,
                              tcfg, meta, preview=preview_fn, finalize=finalize, device=devices.of(cfg)))
    from mrgen.nets.store import read_meta

    res["scale_factor"] = read_meta(cfg.workdir / STAGE)["scale_factor"]
    return res


def load_autoencoder(workdir, cfg: Config, device: str = "cpu"):
    """The trained autoencoder (eval, frozen) and its ``model.json`` dict (``scale_factor``, ``sha256``)."""
    from pathlib import Path

    from mrgen.nets import build_autoencoder, load_model

    ae = build_autoencoder(cfg)
    meta = load_model(Path(workdir) / STAGE, ae, kind=STAGE)
    ae.to(device).eval().requires_grad_(False)
    return ae, meta


def _ssim(a, b) -> float:
    from skimage.metrics import structural_similarity

    win = min(7, *a.shape)
    win -= 1 - win % 2  # odd
    return float(structural_similarity(a, b, data_range=1.0, win_size=max(win, 3)))


@torch.no_grad()
def evaluate(cfg: Config) -> dict:
    """PSNR (dB), SSIM, L1, MSE on [0, 1]-scaled test images; writes ``autoencoder/eval.json``."""
    import numpy as np

    ae, meta = load_autoencoder(cfg.workdir, cfg, devices.of(cfg))
    rows = sorted(open_index(cfg).query(kind=kind_of(cfg), split="test"), key=lambda r: r["id"])
    if not rows:
        raise ValueError(f"no {kind_of(cfg)} rows in the test split; curate with curate.test_fraction > 0")
    items = Items(cfg, rows)
    per: dict[str, list] = {}
    device = next(ae.parameters()).device
    for chunk in torch.arange(len(items)).split(16):
        x = items.images(chunk).to(device)
        y = ae.reconstruct(x).float().clamp(-1, 1)
        for i, j in enumerate(chunk.tolist()):
            a = ((x[i, 0] + 1) / 2).cpu().numpy().astype(np.float64)
            b = ((y[i, 0] + 1) / 2).cpu().numpy().astype(np.float64)
            mse = float(np.mean((a - b) ** 2))
            rec = {"psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))), "ssim": _ssim(a, b),
                   "l1": float(np.mean(np.abs(a - b))), "mse": mse}
            per.setdefault(rows[j]["modality"], []).append(rec)
    allrec = [r for recs in per.values() for r in recs]
    mean = lambda recs, k: float(np.mean([r[k] for r in recs]))  # noqa: E731
    out = {"schema": 1, **{k: mean(allrec, k) for k in ("psnr", "ssim", "l1", "mse")}}
    out.update({"items": len(allrec), "range": "[0, 1] (images mapped from [-1, 1]); PSNR data range 1",
                "per_modality": {m: {k: mean(r, k) for k in ("psnr", "ssim", "l1", "mse")} | {"items": len(r)}
                                 for m, r in sorted(per.items())},
                "checkpoint": meta.get("sha256", ""), "step": meta.get("step")})
    io.write_json(cfg.workdir / STAGE / "eval.json", out)
    return out
