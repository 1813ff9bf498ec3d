"""The ``mrgen`` methods: run the engine's stages on a fold, return its synthetic pairs.

Per fold, ``folds/<k>/engine/`` is an ordinary mrgen run folder (``curated/`` is a link to
the benchmark's curated data, so nothing is curated twice) in which the pipeline stages
``autoencoder → ldm → controller → synthesize → filter`` run with the fold's subject lists
(``run.source_subjects / target_subjects / test_subjects``), so the engine never sees a test
subject and never pairs a source subject with its own target series. The stages run through the
one driver, :func:`mrgen.pipeline.run` (stamps in ``stages.json``), so ``mrgen run -w
folds/<k>/engine`` sees the same stages as current and a rerun resumes.

* ``mrgen`` — the kept (autofiltered) candidates, composed with real source pairs as the benchmark's
  ``config.segment.engine_set`` says (:func:`mrgen.pairs.engine_set`, as ``mrgen run``'s segment stage).
* ``mrgen_synthetic`` — the kept candidates alone, whatever ``segment.engine_set`` says (its ablation row).
* ``mrgen_nofilter`` — the same recipe without the autofilter: ``filter.keep`` random candidates per
  mask (seeded) in place of the kept ones.
* ``mrgen_notarget`` — ``folds/<k>/engine_notarget/`` shares the autoencoder and LDM (links)
  and trains its own controller with ``controller.target_fraction=0`` (no unannotated target
  images), then synthesizes and filters.

When a fold gives ``engine_source`` (the in-domain CHAOS benchmark), the generative stages
train on those subjects' pairs (``run.source_subjects``) and ``synthesize``/``filter`` render the
fold's ``source`` masks (``sample.subjects``; held out from the engine's training).

Compute per stage is recorded in ``<engine>/compute.json``; a variant's compute is the sum
of the stages it uses (shared stages count for every variant that uses them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mrgen import config as C
from mrgen import io
from mrgen.bench.context import Ctx
from mrgen.bench.spec import engine_config
from mrgen.compute import Meter

GENERATIVE = ("autoencoder", "ldm", "controller")
SAMPLING = ("synthesize", "filter")
STAGES = GENERATIVE + SAMPLING
COMPUTE = "compute.json"  # per engine folder: the compute record of every stage that ran (drive writes, recorded reads)


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


def drive(cfg: C.Config, names: tuple, provided: tuple, log=print) -> dict:
    """Run the pipeline stages ``names`` in ``cfg.workdir`` (``provided``: stages whose outputs are linked in).

    Returns the compute record of every stage in ``names`` (kept in ``<workdir>/compute.json``; None
    when it ran outside the harness), with ``ran_now`` set for the stages this call ran. The filter
    runs in a call of its own after the others, so a starved filter (``FilterStarved``) leaves the
    compute of the stages before it recorded (:func:`recorded`; the filter's own scoring is then not).
    """
    from mrgen import pipeline

    wd = cfg.workdir
    ran: dict = {}
    for part in (tuple(n for n in names if n != "filter"), tuple(n for n in names if n == "filter")):
        if not part:
            continue
        res = pipeline.run(cfg, only=part, provided=("curate",) + tuple(provided), meter=Meter, log=log)
        io.write_json(wd / COMPUTE, {**_compute(wd), **res["ran"]})
        ran.update(res["ran"])
    return {n: ({**r, "ran_now": n in ran} if r else None) for n, r in recorded(wd, names).items()}


def _compute(wd) -> dict:
    f = Path(wd) / COMPUTE
    return io.read_json(f) if f.exists() else {}


def recorded(wd, names: tuple) -> dict:
    """``{stage: compute record or None}`` of ``names`` from ``<wd>/compute.json`` (written by :func:`drive`)."""
    comp = _compute(wd)
    return {n: comp.get(n) or None for n in names}


def variant_config(ctx: Ctx, variant: str) -> C.Config:
    """The engine config of ``variant`` for the fold: ``folds/<k>/engine`` (``engine_notarget`` for mrgen_notarget)."""
    fold = ctx.fold
    folder = "engine_notarget" if variant == "mrgen_notarget" else "engine"
    wd = ctx.cfg.workdir / "folds" / str(fold.index) / folder
    extra = ["controller.target_fraction=0"] if variant == "mrgen_notarget" else []
    train_src = tuple(fold.engine_source) or tuple(fold.source)
    if train_src != tuple(fold.source):  # in-domain: render the fold's held-out source masks
        extra.append(f"sample.subjects={json.dumps(list(fold.source))}")
    return engine_config(ctx.spec, ctx.cfg, wd, fold, extra, source=train_src)


def prepare(ctx: Ctx, variant: str) -> C.Config:
    """Make the engine folder(s) for ``variant`` and run the stages it needs; returns its config."""
    cfg = variant_config(ctx, "mrgen")
    wd = cfg.workdir
    wd.mkdir(parents=True, exist_ok=True)
    _link(ctx.root, wd / "curated")
    stages = {"mrgen_nofilter": GENERATIVE + ("synthesize",), "mrgen_notarget": GENERATIVE[:2]}.get(variant, STAGES)
    comp = drive(cfg, stages, (), log=ctx.log)
    ctx.compute.update({f"engine.{k}": v for k, v in comp.items()})
    if variant != "mrgen_notarget":
        return cfg
    own_cfg = variant_config(ctx, variant)
    nwd = own_cfg.workdir
    nwd.mkdir(parents=True, exist_ok=True)
    for name in ("curated", "autoencoder", "ldm"):
        _link(wd / name, nwd / name)
    own = drive(own_cfg, ("controller",) + SAMPLING, ("autoencoder", "ldm"), log=ctx.log)
    ctx.compute.update({f"engine_notarget.{k}": v for k, v in own.items()})
    return own_cfg


def engine_pairs(ctx: Ctx, variant: str) -> tuple[list, list]:
    from mrgen.pairs import engine_set, kept_arrays, random_candidates

    bad = set(ctx.params) - {"budget_cpu_min"}
    if bad:
        raise ValueError(f"{variant}: unknown parameter(s) {sorted(bad)}; set engine settings in the benchmark's 'engine:' section")
    from mrgen.filter import FilterStarved

    try:
        cfg = prepare(ctx, variant)
        starved = None
    except FilterStarved as exc:  # explicit fallback, in the report's notes: never a handful of pairs unsaid
        cfg, starved = variant_config(ctx, variant), str(exc)
        ctx.compute.update({f"engine.{k}": v for k, v in recorded(cfg.workdir, STAGES).items() if v})
        ctx.compute["filter_fallback"] = ("FILTER STARVED, trained on unfiltered candidates (as mrgen_nofilter): "
                                          + starved.split("; training")[0])
        ctx.log(f"[bold red]{variant}: the filter starved; falling back to unfiltered candidates[/]: {starved}")
    if variant == "mrgen_nofilter" or starved:
        images, masks = random_candidates(cfg.workdir, cfg.filter.keep, ctx.rng("mrgen_nofilter"))
    else:
        images, masks = kept_arrays(cfg.workdir)
    if not images:
        raise ValueError(f"{variant}: the engine kept no synthetic pairs (see {cfg.workdir}/filter); relax filter.* thresholds")
    if variant == "mrgen_synthetic" or ctx.cfg.segment.engine_set == "synthetic":
        return images, masks
    (images, masks), made = engine_set(ctx.cfg, (images, masks), ctx.source_pairs(), ctx.rng("engine_set"))
    ctx.compute["training_set"] = {"kind": ctx.cfg.segment.engine_set, "pairs": made}
    return images, masks
