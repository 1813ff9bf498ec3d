"""Downstream Dice against network evaluations per kept sample (issue #15): one trained engine, many samplers.

Takes a benchmark run whose fold ``--fold`` has a trained engine (``<from>/folds/<k>/engine``: autoencoder,
LDM, controller) and, for every sampler setting (solver × steps × candidates per mask), renders the same
masks again with that setting, filters them and trains and evaluates the benchmark's ``mrgen`` segmenter,
through ``mrgen bench`` itself: each setting is a benchmark folder ``<out>/<solver>-<steps>-c<candidates>``
holding a copy of the trained engine stages (the pipeline's stamps see them as current, so only
``synthesize`` and ``filter`` run) and the command's settings as dotted overrides of the definition. Nothing
else changes: the same masks (``sample.max_masks``), seeds, filter, training set and segmenter.

Network evaluations: one evaluation is one UNet + ControlNet forward pass of one sample; a candidate costs
``steps`` of them, twice with classifier-free guidance (guidance ≠ 1). Per kept sample = all candidates'
evaluations / the synthetic pairs the filter kept.

Writes ``--json`` (every setting: masks, kept pairs, evaluations, mean Dice and per label, per-volume scores,
the sampling CPU seconds, and each setting's paired bootstrap against the best one) and ``--figure``.

Usage::

    python benchmarks/sampling_sweep.py benchmarks/mscmr_bssfp_to_lge.yaml --from runs/bench/mscmr_bssfp_to_lge \\
        --fold 0 --out runs/sweep/mscmr --json benchmarks/results/sampling_mscmr.json \\
        --figure docs/figures/sampling_mscmr.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# (solver, steps, candidates per mask): issue #15's grid, the shipped setting first, the costliest renders late
DEFAULT_GRID = (("ddim", 25, 4), ("ddim", 50, 4), ("ddim", 10, 4), ("dpmpp2m", 10, 4), ("dpmpp2m", 5, 4),
                ("unipc", 5, 4), ("dpmpp2m", 10, 2), ("dpmpp2m", 10, 8), ("dpmpp2m", 5, 20), ("dpmpp2m", 25, 4),
                ("unipc", 10, 4))
RENDERED = ("synth", "filter")  # what each setting makes anew; the rest of the engine folder is copied


def parse_grid(text: str) -> list[tuple]:
    """``ddim:50:4,dpmpp2m:10:8`` -> [("ddim", 50, 4), ("dpmpp2m", 10, 8)]."""
    out = []
    for part in text.split(","):
        solver, steps, cands = part.strip().split(":")
        out.append((solver, int(steps), int(cands)))
    return out


def setting_name(solver: str, steps: int, cands: int) -> str:
    return f"{solver}-{steps}-c{cands}"


def copy_engine(src: Path, dst: Path) -> None:
    """The trained engine folder without its renders (links kept as links: ``curated`` points at the new
    benchmark folder's own curated data)."""
    if dst.exists():
        return
    ignore = shutil.ignore_patterns(*RENDERED, *(f"{r}.stale-*" for r in RENDERED), "compute.json")
    shutil.copytree(src, dst, symlinks=True, ignore=ignore)


def evaluations(summary_row: dict, solver_steps: int, cands: int, masks: int, guidance: float) -> dict:
    per_candidate = solver_steps * (2 if guidance != 1.0 else 1)
    total = masks * cands * per_candidate
    kept = summary_row["kept"]
    return {"per_candidate": per_candidate, "total": total, "per_kept": round(total / max(1, kept), 2)}


def one_setting(bench: Path, src_wd: Path, out: Path, fold: int, solver: str, steps: int, cands: int,
                overrides: list) -> dict:
    from mrgen import bench as B
    from mrgen import io
    from mrgen.config import load_config

    name = setting_name(solver, steps, cands)
    wd = out / name
    copy_engine(src_wd / "folds" / str(fold) / "engine", wd / "folds" / str(fold) / "engine")
    ov = list(overrides) + [f"folds.only=[{fold}]", f"engine.sample.solver={solver}",
                            f"engine.sample.ddim_steps={steps}", f"engine.sample.candidates={cands}"]
    t0 = time.time()
    res = B.run(bench, wd, ov, methods="mrgen")
    wall = time.time() - t0
    report = io.read_json(res["json"])
    row = next(r for r in report["results"] if r["method"] == "mrgen" and r["fold"] == fold)
    eng = wd / "folds" / str(fold) / "engine"
    kept = io.read_json(eng / "filter" / "kept.json") if (eng / "filter" / "kept.json").exists() else None
    masks = len(list((eng / "synth" / "candidates").glob("*.npz")))
    from mrgen.config import start_steps

    ecfg = load_config(file=eng / "config.yaml").sample  # the engine's resolved config, as it rendered
    run_steps = start_steps(steps, ecfg.strength)  # sample.strength < 1 (SDEdit) runs only the last steps
    n_kept = len(kept["kept"]) if kept else (row["notes"].get("training_set", {}).get("pairs", {}).get("synthetic")
                                             or row["n_pairs"])
    rec = {"setting": name, "solver": solver, "steps": steps, "candidates": cands, "masks": masks, "kept": n_kept,
           "fallback": row["notes"].get("filter_fallback", ""), "training_pairs": row["n_pairs"],
           "mean_dice": row["metrics"]["mean_dice"],
           "per_label": {k: v["dice"] for k, v in row["metrics"]["per_label"].items()},
           "per_case": row["metrics"].get("per_case") or [],
           "synthesize_cpu_s": (row["compute"].get("engine.synthesize") or {}).get("cpu_s"),
           "filter_cpu_s": (row["compute"].get("engine.filter") or {}).get("cpu_s"), "wall_s": round(wall, 1),
           "strength": ecfg.strength, "adherence": (kept or {}).get("adherence")}
    rec["evaluations"] = evaluations(rec, run_steps, cands, masks, ecfg.guidance)
    return rec


def compare_to_best(rows: list, seed: int) -> None:
    """Each row's paired bootstrap (over test volumes) against the row with the best mean Dice."""
    from mrgen.bench.compare import paired_bootstrap, volume_scores

    best = max(rows, key=lambda r: r["mean_dice"])

    def scores(r):
        return volume_scores([{"method": "x", "fold": 0, "metrics": {"per_case": r["per_case"]}}], "x")

    for r in rows:
        r["vs_best"] = None if r is best else paired_bootstrap(scores(r), scores(best), seed=seed)
    for r in rows:
        r["best"] = r is best


def figure(rows: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {"ddim": "tab:blue", "dpmpp2m": "tab:orange", "unipc": "tab:green"}
    for solver in sorted({r["solver"] for r in rows}):
        pts = sorted((r for r in rows if r["solver"] == solver), key=lambda r: r["evaluations"]["per_kept"])
        for starved in (False, True):  # hollow: the filter starved and the bench fell back to unfiltered candidates
            sub = [r for r in pts if bool(r.get("fallback")) == starved]
            if sub:
                c = colours.get(solver, "k")
                ax.plot([r["evaluations"]["per_kept"] for r in sub], [r["mean_dice"] for r in sub], "o", color=c,
                        mfc="none" if starved else c, label=solver + (" (filter starved: unfiltered)" if starved else ""))
        for r in pts:
            ax.annotate(f"{r['steps']}st c{r['candidates']}", (r["evaluations"]["per_kept"], r["mean_dice"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axvline(1000, color="grey", lw=0.8, ls=":")
    ax.text(1000, ax.get_ylim()[0], " MRGen\n ~1000", fontsize=6, va="bottom")
    ax.axvline(50, color="grey", lw=0.8, ls="--")
    ax.text(50, ax.get_ylim()[0], " goal 50", fontsize=6, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per kept sample (UNet + ControlNet passes)")
    ax.set_ylabel("mean Dice on held-out target volumes")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rows: list, a) -> None:
    """``--json`` and ``--figure`` of the settings measured so far, each compared with the best of them."""
    compare_to_best(rows, seed=0)
    record = {"schema": 1, "benchmark": str(a.bench), "fold": a.fold, "from": str(a.src), "overrides": a.overrides,
              "evaluation": "one UNet + ControlNet pass of one sample; x2 per step with guidance",
              "settings": rows}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(record, indent=1))
    if a.figure:
        figure(rows, a.figure, f"{Path(a.bench).stem}, fold {a.fold}: one engine, sampler settings")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bench", type=Path, help="the benchmark definition (benchmarks/*.yaml)")
    ap.add_argument("--from", dest="src", type=Path, required=True, help="a run of it with the fold's engine trained")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="one benchmark folder per setting is made here")
    ap.add_argument("--grid", default="", help="solver:steps:candidates,... (default: issue #15's grid)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="dotted overrides of the definition, as for `mrgen bench`")
    a = ap.parse_args(argv)
    engine = a.src / "folds" / str(a.fold) / "engine"
    for stage in ("autoencoder", "ldm", "controller"):
        if not (engine / stage).is_dir():
            print(f"error: {engine / stage} not found: run `mrgen bench {a.bench} -w {a.src} --methods mrgen "
                  f"'folds.only=[{a.fold}]'` first", file=sys.stderr)
            return 2
    grid = parse_grid(a.grid) if a.grid else list(DEFAULT_GRID)
    rows = []
    for solver, steps, cands in grid:  # a rerun finds every finished setting in the bench's cache
        print(f"== {setting_name(solver, steps, cands)}", flush=True)
        rows.append(one_setting(a.bench, a.src, a.out, a.fold, solver, steps, cands, a.overrides))
        r = rows[-1]
        print(f"   kept {r['kept']} of {r['masks']} masks x {cands}; {r['evaluations']['per_kept']} evaluations per kept "
              f"sample; mean Dice {r['mean_dice']:.3f}", flush=True)
        write(rows, a)  # after every setting, so a stopped sweep keeps what it measured
    for r in sorted(rows, key=lambda r: r["evaluations"]["per_kept"]):
        vb = r["vs_best"]
        ci = f"[{vb['ci95'][0]:+.3f}, {vb['ci95'][1]:+.3f}]" if vb else "best"
        print(f"{r['setting']:>18}  evals/kept {r['evaluations']['per_kept']:>8}  Dice {r['mean_dice']:.3f}  vs best {ci}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
