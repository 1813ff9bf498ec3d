"""Synthesis throughput on 1 process vs N processes under ``accelerate launch`` (docs/scale.md).

Trains a tiny engine (``tiny`` preset: phantom, curate, autoencoder, LDM, controller; seconds) in
``--workdir`` unless it is there, then renders the same candidates with ``mrgen synthesize`` as one
process and as ``accelerate launch --multi_gpu --num_processes N`` (on a machine without GPUs the
processes run on the CPU with gloo), each into a fresh copy of the engine, with ``OMP_NUM_THREADS``
threads per process. Timed: the synthesis stage itself, from a barrier after start-up to the merged
``provenance.jsonl`` (process start and imports excluded), and the whole command. Checks that the
N-process ``provenance.jsonl`` and candidate images equal the 1-process ones.

Usage: ``python benchmarks/synth_scaling.py [--workdir runs/scaling] [--processes 2] [--masks 8]
[--candidates 8] [--steps 50] [--threads 1] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _overrides(a) -> list[str]:
    return [f"run.workdir={a.run}", "run.device=cpu", f"sample.max_masks={a.masks}", f"sample.candidates={a.candidates}",
            f"sample.batch_size={a.candidates}", f"sample.ddim_steps={a.steps}"]


def worker(a) -> None:
    """Inside each process: time ``synthesize.run`` between barriers; process 0 writes the timing."""
    from mrgen import dist, synthesize
    from mrgen.config import load_config

    cfg = load_config("tiny", overrides=_overrides(a))
    procs = dist.processes(cfg.run.device)
    procs.barrier()
    t0 = time.perf_counter()
    out = synthesize.run(cfg)  # ends with process 0's merge, which every process waits for
    sec = time.perf_counter() - t0
    if procs.main:
        (Path(a.run) / "timing.json").write_text(json.dumps({"stage_s": sec, "candidates": out["candidates"], "masks": out["masks"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="runs/scaling")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--masks", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process")
    ap.add_argument("--json", default="")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    import numpy as np

    from mrgen import autoencoder, controller, curate, ldm, phantom
    from mrgen.config import load_config
    from mrgen.synthesize import load_candidates

    root = Path(a.workdir)
    engine = root / "engine"
    if not (engine / "controller" / "model.safetensors").exists():
        cfg = load_config("tiny", overrides=[f"run.workdir={engine}"])
        for stage in (phantom, curate, autoencoder, ldm, controller):
            stage.run(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    accelerate = Path(sys.executable).with_name("accelerate")
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "threads": a.threads,
               "max_masks": a.masks, "candidates_per_mask": a.candidates, "ddim_steps": a.steps, "runs": {}}
    for n in (1, a.processes):
        run = root / f"p{n}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(engine, run, ignore=shutil.ignore_patterns("synth", "synth.stale-*"))
        me = [__file__, "--worker", "--run", str(run), "--masks", str(a.masks), "--candidates", str(a.candidates),
              "--steps", str(a.steps)]
        cmd = [sys.executable, *me] if n == 1 else [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(n),
                                                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
                                                    "no", *me]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
        wall = time.perf_counter() - t0
        t = json.loads((run / "timing.json").read_text())
        results["runs"][n] = {"processes": n, "stage_s": round(t["stage_s"], 2), "command_s": round(wall, 2),
                              "masks": t["masks"], "candidates": t["candidates"], "candidates_per_s": round(t["candidates"] / t["stage_s"], 2)}
        print(json.dumps(results["runs"][n]), flush=True)
    one, many = root / "p1", root / f"p{a.processes}"
    same = (one / "synth" / "provenance.jsonl").read_bytes() == (many / "synth" / "provenance.jsonl").read_bytes() and all(
        np.array_equal(load_candidates(f)["images"], load_candidates(many / "synth" / "candidates" / f.name)["images"])
        for f in sorted((one / "synth" / "candidates").glob("*.npz")))
    r1, rn = results["runs"][1], results["runs"][a.processes]
    results.update(identical=same, speedup=round(r1["stage_s"] / rn["stage_s"], 2))
    print(json.dumps({"identical": same, "speedup": results["speedup"]}))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
