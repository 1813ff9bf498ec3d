"""The segment stage of ``mrgen run``: one segmenter per training set of the run.

* ``engine`` — the filter's kept synthetic pairs (:func:`mrgen.pairs.kept_arrays`);
* ``source_only`` — real annotated source-modality pairs (``run.baselines``);
* ``oracle`` — real annotated target-modality pairs, when the data has them (the ceiling; never
  seen by the engine);
* ``oracle_plus_engine`` — oracle + engine pairs (FOSCU's real + synthetic setting).

Each goes to ``<workdir>/segment/<name>/`` (:func:`mrgen.segment.train_segmenter`, which resumes
and skips a finished model); ``segment/summary.json`` lists the sets and their sizes.
"""

from __future__ import annotations

from mrgen import devices, dist, io
from mrgen.config import Config

SUMMARY = "summary.json"


def training_sets(cfg: Config) -> dict:
    """``{name: (images, masks)}`` of every segmenter ``mrgen run`` trains for ``cfg``."""
    from mrgen.curate.index import Index
    from mrgen.pairs import kept_arrays, real_pairs
    from mrgen.roles import assign

    roles = assign(Index(cfg.workdir / "curated" / "index.parquet"), cfg)
    sets = {"engine": kept_arrays(cfg.workdir)}
    if "source_only" in cfg.run.baselines:
        sets["source_only"] = real_pairs(cfg, roles.source)
    if "oracle" in cfg.run.baselines:
        annotated = [r for r in roles.target if r["has_mask"]]
        if annotated:
            sets["oracle"] = real_pairs(cfg, annotated)
    if "oracle_plus_engine" in cfg.run.baselines and "oracle" in sets:
        sets["oracle_plus_engine"] = (sets["oracle"][0] + sets["engine"][0], sets["oracle"][1] + sets["engine"][1])
    return sets


def train_sets(cfg: Config) -> dict:
    """Train a segmenter on each of :func:`training_sets`; writes ``segment/summary.json``."""
    from mrgen.curate.labels import n_classes
    from mrgen.segment import train_segmenter

    k = n_classes(cfg.workdir / "curated")
    out = {}
    for name, (images, masks) in training_sets(cfg).items():
        if not images:
            out[name] = "skipped (no training pairs)"
            continue
        train_segmenter(images, masks, k, cfg, cfg.workdir / "segment" / name, name)
        out[name] = f"{len(images)} pairs"
    dist.processes(devices.of(cfg)).on_main(lambda: io.write_json(cfg.workdir / "segment" / SUMMARY, out))
    return out
