"""The ``mrgen`` methods: run the engine's stages on a fold, return its synthetic pairs.

Per fold, ``folds/<k>/engine/`` is an ordinary mrgen run folder (``curated/`` is a link to
the benchmark's curated data, so nothing is curated twice) in which the pipeline stages
``autoencoder → ldm → controller → synthesize → filter`` run with the fold's subject lists
(``run.source_subjects / target_subjects / test_subjects``), so the engine never sees a test
subject and never pairs a source subject with its own target series. Stamps follow
:mod:`mrgen.pipeline` (``stages.json``), so ``mrgen run -w folds/<k>/engine`` sees the same
stages as current and a rerun resumes.

* ``mrgen`` — the kept (autofiltered) candidates.
* ``mrgen_nofilter`` — the same candidates without the autofilter: ``filter.keep`` random
  candidates per mask (seeded).
* ``mrgen_notarget`` — ``folds/<k>/engine_notarget/`` shares the autoencoder and LDM (links)
  and trains its own controller with ``controller.target_fraction=0`` (no unannotated target
  images), then synthesizes and filters.

When a fold gives ``engine_source`` (the in-domain CHAOS benchmark), the generative stages
train on those subjects' pairs and ``synthesize``/``filter`` render the fold's ``source``
masks (held out from the engine's training).

Compute per stage is recorded in ``<engine>/compute.json``; a variant's compute is the sum
of the stages it uses (shared stages count for every variant that uses them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from mrgen import config as C
from mrgen import io
from mrgen.bench.compute import Meter

GENERATIVE = ("autoencoder", "ldm", "controller")
SAMPLING = ("synthesize", "filter")
STAGES = GENERATIVE + SAMPLING
USES = {
    "mrgen": ("autoencoder", "ldm", "controller", "synthesize", "filter"),
    "mrgen_nofilter": ("autoencoder", "ldm", "controller", "synthesize"),
    "mrgen_notarget": ("autoencoder", "ldm", "controller", "synthesize", "filter"),
}


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() and Path(os.path.realpath(dst)) == Path(os.path.realpath(src)):
            return
        if dst.is_symlink():
            dst.unlink()
        else:
            raise FileExistsError(f"{dst} exists and is not a link to {src}; remove it to rerun")
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(src, dst.parent), dst)


def drive(cfgs: dict, names: tuple, assume: tuple, log=print) -> dict:
    """Run pipeline stages ``names`` (in pipeline order) in ``cfgs['train'].workdir``.

    ``cfgs``: ``{"train": Config, "synth": Config}`` (synth = which masks are rendered).
    ``assume``: stages whose outputs are provided (linked) and only get their stamp recorded.
    Returns the compute record of every stage in ``names`` (None when it ran outside the harness),
    with ``ran_now`` set for the stages this call ran.
    """
    from mrgen import pipeline as P

    wd = cfgs["train"].workdir
    done = io.read_json(wd / P.STAGES_FILE) if (wd / P.STAGES_FILE).exists() else {}
    comp = io.read_json(wd / "compute.json") if (wd / "compute.json").exists() else {}
    upstream = P._manifest_hash(cfgs["train"])
    ran = set()
    for stage in P._stages(cfgs["train"]):
        if stage.name not in ("curate",) + STAGES:
            continue
        cfg = cfgs["synth"] if stage.name in SAMPLING else cfgs["train"]
        stamp = P._stamp(cfg, stage, upstream + (P._manifest_hash(cfg) if stage.name == "curate" else ""))
        if stage.name == "curate" or stage.name in assume:
            done[stage.name] = stamp
        elif stage.name in names:
            if not (done.get(stage.name) == stamp and (wd / stage.output).exists()):
                if done.get(stage.name) and stage.folder and (wd / stage.folder).exists():
                    aside = wd / f"{stage.folder}.stale-{done[stage.name]}"
                    shutil.rmtree(aside, ignore_errors=True)
                    (wd / stage.folder).rename(aside)
                    log(f"engine {stage.name}: config changed; old outputs kept in {aside}")
                log(f"engine {wd.name}: {stage.name}")
                with Meter() as m:
                    stage.fn(cfg)
                comp[stage.name] = m.result()
                ran.add(stage.name)
                done[stage.name] = stamp
                io.write_json(wd / "compute.json", comp)
                io.write_json(wd / P.STAGES_FILE, done)
        upstream = stamp
    io.write_json(wd / P.STAGES_FILE, done)
    return {n: ({**comp[n], "ran_now": n in ran} if comp.get(n) else None) for n in names}


def configs(ctx, variant: str) -> dict:
    from mrgen.bench import spec as S

    fold, base = ctx.fold, ctx.cfg
    folder = "engine_notarget" if variant == "mrgen_notarget" else "engine"
    wd = base.workdir / "folds" / str(fold.index) / folder
    extra = ["controller.target_fraction=0"] if variant == "mrgen_notarget" else []
    train_src = tuple(fold.engine_source) or tuple(fold.source)
    out = {"train": S.engine_config(ctx.spec, base, wd, fold, extra, source=train_src)}
    out["synth"] = S.engine_config(ctx.spec, base, wd, fold, extra) if train_src != tuple(fold.source) else out["train"]
    return out


def prepare(ctx, variant: str) -> dict:
    """Make the engine folder(s) for ``variant`` and run the stages it needs; returns the configs."""
    base_cfgs = configs(ctx, "mrgen")
    wd = base_cfgs["train"].workdir
    wd.mkdir(parents=True, exist_ok=True)
    _link(ctx.root, wd / "curated")
    C.save_resolved(base_cfgs["train"], wd)
    stages = USES["mrgen_nofilter"] if variant == "mrgen_nofilter" else GENERATIVE[:2] if variant == "mrgen_notarget" else STAGES
    comp = drive(base_cfgs, stages, assume=(), log=ctx.log)
    if variant != "mrgen_notarget":
        ctx.compute.update({f"engine.{k}": v for k, v in comp.items()})
        return base_cfgs
    cfgs = configs(ctx, variant)
    nwd = cfgs["train"].workdir
    nwd.mkdir(parents=True, exist_ok=True)
    for name in ("curated", "autoencoder", "ldm"):
        _link(wd / name, nwd / name)
    C.save_resolved(cfgs["train"], nwd)
    own = drive(cfgs, ("controller",) + SAMPLING, assume=("autoencoder", "ldm"), log=ctx.log)
    ctx.compute.update({f"engine.{k}": v for k, v in comp.items()})
    ctx.compute.update({f"engine_notarget.{k}": v for k, v in own.items()})
    return cfgs


def random_candidates(cfg: C.Config, keep: int, rng: np.random.Generator) -> tuple[list, list]:
    """``keep`` random candidates per synthesized mask (no autofilter)."""
    from mrgen.sample import load_candidates

    images, masks = [], []
    for f in sorted((cfg.workdir / "synth" / "candidates").glob("*.npz")):
        c = load_candidates(f)
        pick = rng.choice(len(c["images"]), size=min(keep, len(c["images"])), replace=False)
        for i in sorted(int(x) for x in pick):
            images.append(np.asarray(c["images"][i], np.float32))
            masks.append(np.asarray(c["mask"], np.int64))
    return images, masks


def engine_pairs(ctx, variant: str) -> tuple[list, list]:
    from mrgen.curate.labels import context_values, strip_context
    from mrgen.pipeline import _kept_pairs

    bad = set(ctx.params) - {"budget_cpu_min"}
    if bad:
        raise ValueError(f"{variant}: unknown parameter(s) {sorted(bad)}; set engine settings in the benchmark's 'engine:' section")
    cfgs = prepare(ctx, variant)
    if variant == "mrgen_nofilter":
        images, masks = random_candidates(cfgs["synth"], cfgs["synth"].filter.keep, ctx.rng("mrgen_nofilter"))
    else:
        images, masks = _kept_pairs(cfgs["synth"])
    images = [np.asarray(i, np.float32) for i in images]
    drop = context_values(ctx.root)  # the engine renders with context labels; the segmenter never sees them
    masks = [np.asarray(strip_context(m, drop), np.int64) for m in masks]
    if not images:
        raise ValueError(f"{variant}: the engine kept no synthetic pairs (see {cfgs['synth'].workdir}/filter); relax filter.* thresholds")
    return images, masks
