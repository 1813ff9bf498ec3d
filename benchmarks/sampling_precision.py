"""bf16 autocast vs fp32 sampling: max |difference| of the final latents and decoded images, per solver.

Nets of a preset (``--preset tiny``: channels (8, 8), 16 px) built by ``mrgen.nets`` with seeded
random weights (a seeded perturbation of every parameter, since MONAI zero-initialises output
convolutions), random text contexts, random label maps through the mask ControlNet, classifier-free
guidance, fixed seeds. The same ``mrgen.diffusion.sample`` call runs once with ``precision="fp32"``
and once with ``"bf16"``; the latents are decoded in fp32 both times. ``tests/diffusion`` runs
:func:`measure` and holds the result to the tolerance stated in ``docs/performance.md``.

Usage: ``python benchmarks/sampling_precision.py [--preset tiny] [--steps 10] [--n 8] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json

import torch

from mrgen.config import SOLVERS


def _perturb(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def measure(preset: str = "tiny", steps: int = 10, n: int = 8, guidance: float = 3.0, seed: int = 0) -> dict:
    """``{solver: {"latent_max_abs", "image_max_abs", "latent_std"}}`` of bf16 vs fp32 sampling."""
    from mrgen import nets
    from mrgen.config import load_config
    from mrgen.diffusion import decode, make_solver, sample
    from mrgen.nets.builders import latent_shape

    cfg = load_config(preset)
    dim, labels = int(cfg.text.dim), 4
    unet = _perturb(nets.build_unet(cfg, dim), seed)
    den = nets.ControlledUNet(unet, _perturb(nets.build_controller(cfg, unet, labels), seed + 1))
    ae = _perturb(nets.build_autoencoder(cfg), seed + 2)
    g = torch.Generator().manual_seed(seed + 3)
    ctx = torch.randn(n, cfg.text.max_length, dim, generator=g)
    unc = torch.randn(1, cfg.text.max_length, dim, generator=g)
    size = (cfg.data.image_size,) * cfg.data.spatial_dims
    cond = nets.encode_mask(torch.randint(0, labels + 1, (n, *size), generator=g), cfg.controller.mask_encoding, labels)
    seeds = list(range(100, 100 + n))
    out = {}
    for solver in SOLVERS:
        lat = {p: sample(den, make_solver(cfg.diffusion, steps, solver), ctx, unc, latent_shape(cfg, n), seeds,
                         guidance, cond=cond, precision=p) for p in ("fp32", "bf16")}
        img = {p: decode(ae, z, 1.0).clamp(-1, 1) for p, z in lat.items()}
        out[solver] = {"latent_max_abs": float((lat["bf16"] - lat["fp32"]).abs().max()),
                       "image_max_abs": float((img["bf16"] - img["fp32"]).abs().max()),
                       "latent_std": float(lat["fp32"].std())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--n", type=int, default=8, help="samples (masks) per solver")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    res = measure(args.preset, args.steps, args.n, args.guidance)
    print(f"\n{args.preset} preset, {args.steps} steps, CFG {args.guidance}, {args.n} samples, torch {torch.__version__}\n")
    print("| solver | max abs Δ latents | latent std (fp32) | max abs Δ images ([-1, 1]) |")
    print("|---|---|---|---|")
    for solver, r in res.items():
        print(f"| {solver} | {r['latent_max_abs']:.4f} | {r['latent_std']:.3f} | {r['image_max_abs']:.4f} |")
    if args.json:
        from mrgen import io

        io.write_json(args.json, {"args": vars(args), "results": res})


if __name__ == "__main__":
    main()
