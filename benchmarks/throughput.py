"""Training throughput and sampling time of the ``cpu`` preset, on random tensors (no data needed).

Measures, in one run:

* autoencoder training step (64 px images, batch ``autoencoder.train.batch_size``), fp32 vs bf16;
* LDM training step (16x16x4 latents, batch ``ldm.train.batch_size``), fp32 vs bf16, with cached
  latents (what ``mrgen train ldm`` does) vs encoding each batch through the frozen autoencoder;
* sampling: 50 DDIM steps with classifier-free guidance, batch 16, decode included (fp32).

The steps are the real ones (``mrgen.ldm.diffusion_loss``, MONAI nets from ``mrgen.nets``,
autocast from ``mrgen.train.make_accelerator``, AdamW). Context = random ``(N, 48, 384)``
tensors shaped like the minilm text encoder's output.

Usage: ``python benchmarks/throughput.py [--steps 3] [--warmup 1] [--json out.json] [--preset cpu]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F


def _timed(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--sample-batch", type=int, default=16)
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("--preset", default="cpu", help="config preset (tiny = smoke test of this script)")
    args = ap.parse_args()

    from mrgen.autoencoder import kl_loss
    from mrgen.config import load_config
    from mrgen.diffusion import decode, make_ddim, make_train_scheduler, sample
    from mrgen.ldm import diffusion_loss
    from mrgen.nets import UNetDenoiser, build_autoencoder, build_unet, latent_shape
    from mrgen.train import make_accelerator, seed_all

    cfg = load_config(args.preset)
    seed_all(0)
    ctx_dim, ctx_len = 384, cfg.text.max_length
    size = cfg.data.image_size
    results: dict = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                     "machine": platform.processor() or platform.machine(), "settings": {}}

    # ---- autoencoder
    bs_ae = cfg.autoencoder.train.batch_size
    ae = build_autoencoder(cfg)
    opt_ae = torch.optim.AdamW(ae.parameters(), lr=1e-4)
    x_ae = torch.rand(bs_ae, 1, size, size) * 2 - 1
    for prec in ("fp32", "bf16"):
        acc = make_accelerator(prec)

        def ae_step():
            with acc.autocast():
                rec, mu, sigma = ae(x_ae)
                loss = F.mse_loss(rec.float(), x_ae) + cfg.autoencoder.kl_weight * kl_loss(mu, sigma)
            opt_ae.zero_grad()
            loss.backward()
            opt_ae.step()

        sec = _timed(ae_step, args.steps, args.warmup)
        results["settings"][f"autoencoder train {prec}"] = {"s_per_step": sec, "images_per_s": bs_ae / sec, "batch": bs_ae}

    # ---- LDM
    bs = cfg.ldm.train.batch_size
    ae.eval().requires_grad_(False)
    unet = build_unet(cfg, ctx_dim)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    sched = make_train_scheduler(cfg.diffusion)
    lat = torch.randn(latent_shape(cfg, bs))
    imgs = torch.rand(bs, 1, size, size) * 2 - 1
    ctx = torch.randn(bs, ctx_len, ctx_dim)
    for prec in ("fp32", "bf16"):
        acc = make_accelerator(prec)
        for cached in (True, False):

            def ldm_step():
                with acc.autocast():
                    if cached:
                        z = lat
                    else:
                        with torch.no_grad():
                            mu, sigma = ae.encode(imgs)
                            z = (mu + sigma * torch.randn_like(sigma)).float()
                    loss = diffusion_loss(UNetDenoiser(unet), sched, z, ctx)
                opt.zero_grad()
                loss.backward()
                opt.step()

            sec = _timed(ldm_step, args.steps, args.warmup)
            name = f"ldm train {prec} {'cached latents' if cached else 'encode every step'}"
            results["settings"][name] = {"s_per_step": sec, "images_per_s": bs / sec, "batch": bs}

    # ---- sampling (fp32, CFG => UNet batch 2N)
    unet.eval()
    n = args.sample_batch
    ddim = make_ddim(cfg.diffusion, args.sample_steps)
    c, u = torch.randn(n, ctx_len, ctx_dim), torch.randn(1, ctx_len, ctx_dim)
    t0 = time.perf_counter()
    out = decode(ae, sample(UNetDenoiser(unet), ddim, c, u, latent_shape(cfg, n), list(range(n)), guidance=7.0), 1.0)
    sec = time.perf_counter() - t0
    assert out.shape == (n, 1, size, size)
    results["settings"][f"sample {args.sample_steps} DDIM steps, CFG 7, batch {n}, fp32"] = {
        "s_total": sec, "s_per_image": sec / n}

    base_ae = results["settings"]["autoencoder train fp32"]["images_per_s"]
    base_ldm = results["settings"]["ldm train fp32 cached latents"]["images_per_s"]
    print(f"\ntorch {torch.__version__}, {results['torch_threads']} threads, {results['machine']}\n")
    print("| setting | s/step | images/s | ratio |")
    print("|---|---|---|---|")
    for name, r in results["settings"].items():
        if "images_per_s" in r:
            base = base_ae if name.startswith("autoencoder") else base_ldm
            r["ratio"] = r["images_per_s"] / base
            print(f"| {name} (batch {r['batch']}) | {r['s_per_step']:.3f} | {r['images_per_s']:.1f} | {r['ratio']:.2f}x |")
        else:
            print(f"| {name} | {r['s_total']:.1f} s total | {r['s_per_image']:.2f} s/image | |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
