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

With ``rounds.count`` >= 2 in the ``engine`` section, ``mrgen`` and ``mrgen_synthetic`` use the last round
(:func:`next_round`, :mod:`mrgen.rounds`): the benchmark's segmenter trained on round k-1's pairs (composed as the
``mrgen`` method composes them) pseudo-labels the fold's unannotated target items, and ``engine/round<k>/``
retrains the controller on the confident ones and renders again. ``mrgen_nofilter`` stays with round 1.

When a fold gives ``engine_source`` (the in-domain CHAOS benchmark), the generative stages
train on those subjects' pairs (``run.source_subjects``) and ``synthesize``/``filter`` render the
fold's ``source`` masks (``sample.subjects``; held out from the engine's training).

Compute per stage is recorded in ``<engine>/compute.json``; a variant's compute is the sum
of the stages it uses (shared stages count for every variant that uses them).
"""

from __future__ import annotations

import json
from pathlib import Path

from mrgen import config as C
from mrgen import io, rounds
from mrgen.bench.context import Ctx
from mrgen.bench.spec import engine_config
from mrgen.compute import Meter

GENERATIVE = ("autoencoder", "ldm", "controller")
SAMPLING = ("synthesize", "filter")
STAGES = GENERATIVE + SAMPLING
COMPUTE = "compute.json"  # per engine folder: the compute record of every stage that ran (drive writes, recorded reads)


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


def variant_config(ctx: Ctx, variant: str, round_: int = 1) -> C.Config:
    """The engine config of ``variant`` for the fold: ``folds/<k>/engine`` (``engine_notarget`` for mrgen_notarget;
    round k >= 2 in ``engine/round<k>``, :func:`mrgen.rounds.config`)."""
    if round_ > 1:
        return rounds.config(variant_config(ctx, variant), round_)
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
    rounds.link(ctx.root, wd / "curated")
    stages = {"mrgen_nofilter": GENERATIVE + ("synthesize",), "mrgen_notarget": GENERATIVE[:2]}.get(variant, STAGES)
    comp = drive(cfg, stages, (), log=ctx.log)
    ctx.compute.update({f"engine.{k}": v for k, v in comp.items()})
    if variant in ("mrgen", "mrgen_synthetic"):
        for k in range(2, cfg.rounds.count + 1):
            cfg = next_round(ctx, variant, cfg, k)
        return cfg
    if variant != "mrgen_notarget":
        return cfg
    own_cfg = variant_config(ctx, variant)
    nwd = own_cfg.workdir
    nwd.mkdir(parents=True, exist_ok=True)
    for name in ("curated", "autoencoder", "ldm"):
        rounds.link(wd / name, nwd / name)
    own = drive(own_cfg, ("controller",) + SAMPLING, ("autoencoder", "ldm"), log=ctx.log)
    ctx.compute.update({f"engine_notarget.{k}": v for k, v in own.items()})
    return own_cfg


def next_round(ctx: Ctx, variant: str, prev: C.Config, k: int) -> C.Config:
    """Round ``k`` of the engine (``rounds.count`` >= k): the benchmark's segmenter trained on round k-1's pairs
    (as the ``mrgen`` method composes them) labels the fold's unannotated target items (:mod:`mrgen.pseudo`, in
    ``<round k-1>/pseudo/``, with that segmenter); ``engine/round<k>/`` shares the autoencoder and LDM (links) and
    trains its controller on the confident ones, then synthesizes and filters (:mod:`mrgen.rounds`). Returns round k's
    config."""
    from mrgen.curate.labels import n_classes
    from mrgen.segment.pseudolabel import label_targets
    from mrgen.segment import train_segmenter

    first = variant_config(ctx, variant)
    folder = rounds.pseudo_folder(first.workdir, k)
    images, masks = _compose(ctx, kept_pairs(ctx, prev), prev, f"round{k}_labeller_set")
    with Meter() as m:
        train_segmenter(images, masks, n_classes(ctx.root), ctx.cfg, folder / "segmenter", f"round{k - 1}")
        record = label_targets(prev, folder / "segmenter", folder)
    ctx.compute[f"engine_r{k}.pseudo"] = {**m.result(), "ran_now": True}  # the round-(k-1) segmenter and its labels
    ctx.log(f"round {k}: {record['kept']} of {record['target_items']} target items pseudo-labelled "
            f"(score >= {record['score_threshold']:.3f})")
    rounds.prepare(first, k)
    cfg = rounds.config(first, k)
    from mrgen.filter import FilterStarved

    try:
        own = drive(cfg, ("controller",) + SAMPLING, ("autoencoder", "ldm"), log=ctx.log)
    except FilterStarved as exc:  # engine_pairs falls back to this round's unfiltered candidates
        exc.round = k
        raise
    ctx.compute.update({f"engine_r{k}.{n}": v for n, v in own.items()})
    ctx.compute[f"round{k}_pseudo"] = {x: record[x] for x in ("target_items", "candidates", "kept", "score_threshold")}
    return cfg


def kept_pairs(ctx: Ctx, cfg: C.Config) -> tuple[list, list]:
    """The filter's kept pairs of the engine folder of ``cfg``; refused when there are none."""
    from mrgen.pairs import kept_arrays

    images, masks = kept_arrays(cfg.workdir)
    if not images:
        raise ValueError(f"the engine kept no synthetic pairs (see {cfg.workdir}/filter); relax filter.* thresholds")
    return images, masks


def _compose(ctx: Ctx, synthetic: tuple[list, list], engine: C.Config, note: str = "training_set") -> tuple[list, list]:
    """The ``mrgen`` method's training set from the pairs of the engine round ``engine`` (``config.segment.engine_set``;
    with ``config.segment.pseudo_pairs`` also the target items that round's controller trained on as pseudo-labelled);
    its make-up goes to the result's notes under ``note``."""
    from mrgen.curate.labels import context_values
    from mrgen.pairs import engine_set, pseudo_pairs

    pseudo = pseudo_pairs(engine) if ctx.cfg.segment.pseudo_pairs else ([], [])
    with_source = ctx.cfg.segment.engine_set != "synthetic"
    source = ctx.source_pairs(keep_context=True) if with_source else ([], [])  # context labels: engine_set drops them
    context = context_values(ctx.root) if with_source else ()
    (images, masks), made = engine_set(ctx.cfg, synthetic, source, ctx.rng("engine_set"), pseudo, context)
    ctx.compute[note] = {"kind": ctx.cfg.segment.engine_set, "pairs": made}
    return images, masks


def engine_pairs(ctx: Ctx, variant: str) -> tuple[list, list]:
    from mrgen.pairs import random_candidates

    bad = set(ctx.params) - {"budget_cpu_min"}
    if bad:
        raise ValueError(f"{variant}: unknown parameter(s) {sorted(bad)}; set engine settings in the benchmark's 'engine:' section")
    from mrgen.filter import FilterStarved

    try:
        cfg = prepare(ctx, variant)
        starved = None
    except FilterStarved as exc:  # explicit fallback, in the report's notes: never a handful of pairs unsaid
        k = getattr(exc, "round", 1)
        cfg, starved = variant_config(ctx, variant, k), str(exc)
        prefix = "engine" if k == 1 else f"engine_r{k}"  # round k's own stages, beside round 1's
        ctx.compute.update({f"{prefix}.{n}": v for n, v in recorded(cfg.workdir, STAGES).items() if v})
        ctx.compute["filter_fallback"] = (f"FILTER STARVED in round {k}, trained on that round's unfiltered candidates "
                                          "(as mrgen_nofilter): " + starved.split("; training")[0])
        ctx.log(f"[bold red]{variant}: the filter starved; falling back to unfiltered candidates[/]: {starved}")
    if variant == "mrgen_nofilter" or starved:
        images, masks = random_candidates(cfg.workdir, cfg.filter.keep, ctx.rng("mrgen_nofilter"))
        if not images:
            raise ValueError(f"{variant}: the engine rendered no candidates (see {cfg.workdir}/synth)")
    else:
        images, masks = kept_pairs(ctx, cfg)
    if variant == "mrgen_synthetic":
        return images, masks
    return _compose(ctx, (images, masks), cfg)
