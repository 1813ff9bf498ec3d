"""The segment stage of ``mrgen run``: one segmenter per training set of the run.

* ``engine`` — the filter's kept synthetic pairs (:func:`mrgen.pairs.kept_arrays`), with real source pairs
  as ``segment.engine_set`` says (:func:`mrgen.pairs.engine_set`);
* ``source_only`` — real annotated source-modality pairs (``run.baselines``);
* ``oracle`` — real annotated target-modality pairs, when the data has them (the ceiling; never
  seen by the engine);
* ``oracle_plus_engine`` — oracle + engine pairs (FOSCU's real + synthetic setting).

Each goes to ``<workdir>/segment/<name>/`` (:func:`mrgen.segment.train_segmenter`, which resumes
and skips a finished model); ``segment/summary.json`` lists the sets and their sizes, and the engine set's
make-up (``engine_set``: pairs per kind, the seed of its randomised copies).
"""

from __future__ import annotations

from mrgen import devices, dist, io, seeds
from mrgen.config import Config

SUMMARY = "summary.json"


def engine_seed(cfg: Config) -> int:
    """The seed of the engine set's randomised source copies (recorded in ``segment/summary.json``)."""
    return seeds.derive(int(cfg.run.seed), "engine_set")


def training_sets(cfg: Config) -> tuple[dict, dict]:
    """``{name: (images, masks)}`` of every segmenter ``mrgen run`` trains for ``cfg``, and the engine set's
    make-up (:func:`mrgen.pairs.engine_set`)."""
    import numpy as np

    from mrgen.curate.index import Index
    from mrgen.curate.labels import context_values, strip_context
    from mrgen.pairs import engine_set, kept_arrays, pseudo_pairs, real_pairs
    from mrgen.roles import assign

    roles = assign(Index(cfg.workdir / "curated" / "index.parquet"), cfg)
    need_source = cfg.segment.engine_set != "synthetic" or "source_only" in cfg.run.baselines
    context = context_values(cfg.workdir / "curated")
    source = real_pairs(cfg, roles.source, keep_context=True) if need_source else ([], [])  # context: engine_set drops it
    synthetic = kept_arrays(cfg.workdir)
    pseudo = pseudo_pairs(cfg) if cfg.segment.pseudo_pairs else ([], [])
    engine, made = engine_set(cfg, synthetic, source, np.random.default_rng(engine_seed(cfg)), pseudo, context)
    sets = {"engine": engine}
    if "source_only" in cfg.run.baselines:
        sets["source_only"] = (source[0], [strip_context(m, context) for m in source[1]])
    if "oracle" in cfg.run.baselines:
        annotated = [r for r in roles.target if r["has_mask"]]
        if annotated:
            sets["oracle"] = real_pairs(cfg, annotated)
    if "oracle_plus_engine" in cfg.run.baselines and "oracle" in sets:
        sets["oracle_plus_engine"] = (sets["oracle"][0] + synthetic[0], sets["oracle"][1] + synthetic[1])
    return sets, made


def train_sets(cfg: Config) -> dict:
    """Train a segmenter on each of :func:`training_sets`; writes ``segment/summary.json``."""
    from mrgen.curate.labels import n_classes
    from mrgen.segment import train_segmenter

    k = n_classes(cfg.workdir / "curated")
    out = {}
    sets, made = training_sets(cfg)
    for name, (images, masks) in sets.items():
        if not images:
            out[name] = "skipped (no training pairs)"
            continue
        train_segmenter(images, masks, k, cfg, cfg.workdir / "segment" / name, name)
        out[name] = f"{len(images)} pairs"
    summary = {"schema": 1, "sets": out,
               "engine_set": {"kind": cfg.segment.engine_set, "pairs": made, "seed": engine_seed(cfg)}}
    dist.processes(devices.of(cfg)).on_main(lambda: io.write_json(cfg.workdir / "segment" / SUMMARY, summary))
    return out
