"""Training throughput of mrgen's LDM and controller stages against a plain MONAI-tutorial loop (issue #15).

Same nets, same data, same batch size, same machine, one process, one run:

* **tutorial loop** (as MONAI's ``2d_ldm`` / ``2d_controlnet`` tutorials write it, on CPU): fp32, a
  ``torch.utils.data.DataLoader`` over the curated images, the frozen autoencoder applied to every batch
  (``LatentDiffusionInferer``, which encodes its ``inputs`` each call; for the controller
  ``encode_stage_2_inputs`` then ControlNet + UNet with the residuals), default memory format, AdamW;
* **mrgen stage**: the stage's own training step, captured from ``mrgen.ldm.run`` / ``mrgen.controller.run``
  (their :class:`mrgen.train.Job`, stepped by :class:`mrgen.train._Loop`: cached posterior latents,
  the stage precision (bf16 autocast where the CPU computes in it), EMA, per-step reseeding);
* optional variants of the mrgen step (``--variants``): ``channels_last`` (modules and inputs) and
  ``compile`` (``nn.Module.compile()`` of the trained and frozen nets, inductor).

The data and frozen nets come from a scratch run on the built-in phantom (``phantom``, ``curate`` and a few
autoencoder / LDM steps: weights do not change step times). Each setting: ``--warmup`` steps, then
``--steps`` timed steps; the settings are measured in ``--rounds`` alternating rounds (tutorial, mrgen,
variants, tutorial, ...) and each setting's images/s is the mean over rounds.

Usage::

    python benchmarks/tutorial_loop.py --preset cpu --steps 20 --rounds 2 --json benchmarks/results/tutorial_loop.json
    python benchmarks/tutorial_loop.py --preset tiny --steps 2 --rounds 1 --warmup 1   # smoke test (CI)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F


def prepare(preset: str, workdir: Path, overrides: list[str]):
    """A workdir with the phantom curated and a briefly trained autoencoder and LDM; returns its config."""
    from mrgen import pipeline
    from mrgen.config import load_config

    cfg = load_config(preset, overrides=[f"run.workdir={workdir}", "autoencoder.train.steps=4", "ldm.train.steps=4",
                                         *overrides])
    pipeline.run(cfg, only=("phantom", "curate", "autoencoder", "ldm"))
    return cfg


def captured_job(stage_run, cfg):
    """The :class:`mrgen.train.Job` that ``stage_run(cfg)`` hands to ``train.fit`` (not run)."""
    from mrgen import train

    jobs = []
    with mock.patch.object(train, "fit", lambda job: jobs.append(job) or {}):
        stage_run(cfg)
    return jobs[0]


def mrgen_step(job, variant: str = ""):
    """``step(i)``: one optimizer step of the stage's own loop (``train._Loop.step``), optionally modified."""
    from mrgen import train

    if variant == "channels_last":
        for m in job.modules.values():
            m.to(memory_format=torch.channels_last)
        batch = job.batch
        job.batch = lambda step, draw: tuple(t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t
                                             for t in batch(step, draw))
    elif variant == "compile":
        for name in ("unet", "controller"):
            if name in job.modules:
                job.modules[name].compile()
    loop = train._Loop(job, "tutorial-loop-benchmark")
    return loop.step


def tutorial_ldm_step(cfg, ae, text, batch: int):
    """MONAI 2d_ldm tutorial's step: fp32, DataLoader, ``LatentDiffusionInferer`` encoding every batch."""
    from monai.inferers import LatentDiffusionInferer

    from mrgen.autoencoder.data import Items
    from mrgen.diffusion import make_train_scheduler
    from mrgen.ldm import Conditioner, ldm_rows, prompt_of
    from mrgen.nets import build_unet

    rows = ldm_rows(cfg)
    cond = Conditioner(cfg, text, [prompt_of(r) for r in rows])
    images = Items(cfg, rows).images(torch.arange(len(rows)))
    ids = cond.ids([prompt_of(r) for r in rows])
    loader = _forever(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, ids), batch_size=batch,
                                                  shuffle=True, drop_last=True))
    unet = build_unet(cfg, text.dim).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.ldm.train.lr)
    sched = make_train_scheduler(cfg.diffusion)
    inferer = LatentDiffusionInferer(sched, scale_factor=1.0)
    z_shape = ae.encode_stage_2_inputs(images[:1]).shape[1:]

    def step(_):
        x, i = next(loader)
        noise = torch.randn(len(x), *z_shape)
        t = torch.randint(0, sched.num_train_timesteps, (len(x),)).long()
        pred = inferer(inputs=x, autoencoder_model=ae, diffusion_model=unet, noise=noise, timesteps=t,
                       condition=cond.context(i, "cpu"))
        loss = F.mse_loss(pred.float(), noise.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def tutorial_controller_step(cfg, ae, unet, text, batch: int):
    """MONAI 2d_controlnet tutorial's step on latents: fp32, DataLoader over the controller stage's items (source
    with masks, target with their all-zero / context masks), the autoencoder encoding every batch, ControlNet +
    frozen UNet."""
    from mrgen.controller.batches import load_mix
    from mrgen.diffusion import make_train_scheduler
    from mrgen.ldm import Conditioner
    from mrgen.nets import build_controller, encode_mask

    mix = load_mix(cfg)
    cond = Conditioner(cfg, text, mix.src_prompts + mix.tgt_prompts)
    parts = [(mix.src_items, mix.src_prompts), (mix.tgt_items, mix.tgt_prompts)]
    images = torch.cat([it.images(torch.arange(len(p))) for it, p in parts if p])
    masks = torch.cat([it.masks(torch.arange(len(p))) for it, p in parts if p])
    ids = cond.ids([q for _, p in parts for q in p])
    loader = _forever(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, masks, ids),
                                                  batch_size=batch, shuffle=True, drop_last=True))
    ctrl = build_controller(cfg, unet, mix.labels).train()
    unet.eval().requires_grad_(False)
    opt = torch.optim.AdamW(ctrl.parameters(), lr=cfg.controller.train.lr)
    sched = make_train_scheduler(cfg.diffusion)

    def step(_):
        x, m, i = next(loader)
        with torch.no_grad():
            z = ae.encode_stage_2_inputs(x)
        noise = torch.randn_like(z)
        t = torch.randint(0, sched.num_train_timesteps, (len(x),)).long()
        zt = sched.add_noise(original_samples=z, noise=noise, timesteps=t)
        c = cond.context(i, "cpu")
        down, mid = ctrl(x=zt, timesteps=t, controlnet_cond=encode_mask(m, cfg.controller.mask_encoding, mix.labels),
                         context=c)
        pred = unet(x=zt, timesteps=t, context=c, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid)
        loss = F.mse_loss(pred.float(), noise.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _forever(loader):
    while True:
        yield from loader


def timed(step, warmup: int, steps: int, start: int = 0) -> float:
    for i in range(warmup):
        step(start + i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(start + warmup + i)
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--workdir", type=Path, default=Path("runs/tutorial_loop"))
    ap.add_argument("--steps", type=int, default=20, help="timed steps per setting and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default="", help="comma list of mrgen-step variants: channels_last, compile")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (both loops)")
    a = ap.parse_args(argv)

    from mrgen import controller, devices, ldm
    from mrgen.autoencoder import load_autoencoder
    from mrgen.ldm import load_ldm

    cfg = prepare(a.preset, a.workdir, a.overrides)
    ae, _ = load_autoencoder(cfg.workdir, cfg, "cpu")
    unet, text, _ = load_ldm(cfg.workdir, cfg, "cpu")
    variants = [v for v in a.variants.split(",") if v]
    settings: dict = {}
    for stage, bs in (("ldm", cfg.ldm.train.batch_size), ("controller", cfg.controller.train.batch_size)):
        run_fn = ldm.run if stage == "ldm" else controller.run
        steps = {"tutorial loop (fp32, encode every batch, DataLoader)":
                 tutorial_ldm_step(cfg, ae, text, bs) if stage == "ldm" else tutorial_controller_step(cfg, ae, unet, text, bs)}
        for v in ["", *variants]:
            steps["mrgen stage" + (f" + {v}" if v else "")] = mrgen_step(captured_job(run_fn, cfg), v)
        times: dict = {k: [] for k in steps}
        for r in range(a.rounds):
            for name, fn in steps.items():
                times[name].append(timed(fn, a.warmup if r == 0 else 1, a.steps, start=r * (a.steps + a.warmup)))
                print(f"{stage:>10} round {r}  {name:<52} {bs / times[name][-1]:8.1f} img/s", flush=True)
        base = None
        for name, ts in times.items():
            ips = [bs / t for t in ts]
            mean = sum(ips) / len(ips)
            base = base or mean
            settings[f"{stage}: {name}"] = {"stage": stage, "batch": bs, "images_per_s": round(mean, 2),
                                            "rounds": [round(x, 2) for x in ips], "ratio": round(mean / base, 3)}
    res = {"schema": 1, "preset": a.preset, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(), "cpu_bf16": devices.cpu_bf16(),
           "precision": {"ldm": cfg.ldm.train.precision, "controller": cfg.controller.train.precision},
           "steps": a.steps, "warmup": a.warmup, "rounds": a.rounds, "date": time.strftime("%Y-%m-%d"),
           "settings": settings}
    print("\n| stage | loop | images/s | ratio to the tutorial loop |\n|---|---|---|---|")
    for name, s in settings.items():
        print(f"| {s['stage']} | {name.split(': ', 1)[1]} | {s['images_per_s']:.1f} | {s['ratio']:.2f}x |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
