"""``mrgen bench CONFIG``: the cross-modality benchmark on real MRI, every method side by side.

``run(bench_yaml, workdir, overrides, methods)``: curate the benchmark's data once (its embedded
manifest -> ``<workdir>/curated``), then for every fold x method build the method's training
pairs (:mod:`mrgen.bench.methods`), train the benchmark's segmenter on them
(``mrgen.segment.train_segmenter``, the same settings for every method), evaluate it on the
fold's real target test volumes (``mrgen.evaluate.evaluate_segmenter`` plus the benchmark's label
groups) and record the compute each phase used. Every (fold, method) is cached in
``<workdir>/folds/<k>/<method>/`` (``pairs.npz``, ``segmenter/``, ``result.json``, each with a
stamp of the settings it depends on), so a rerun resumes and a changed setting recomputes
only what it affects. Reports: ``bench.json``, ``bench.md``, ``dice.png``, ``examples.png``,
``pairs.png`` (see :mod:`mrgen.bench.report`).
"""

from __future__ import annotations

import dataclasses

import shutil
import time
from pathlib import Path

import numpy as np

from mrgen import config as C
from mrgen import io
from mrgen.bench import spec as S
from mrgen.bench.context import Ctx
from mrgen.bench.evaluate import VERSION as E_VERSION
from mrgen.bench.methods import ENGINE_METHODS, METHODS
from mrgen.compute import Meter, combine

__all__ = ["run", "fold_roles", "METHODS"]


def _log(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(msg, highlight=False, soft_wrap=True)


def zfilter(rows: list, z: tuple) -> list:
    """Keep slice rows whose fractional height ``(slice + 0.5) / Z`` lies in ``[z0, z1)``."""
    if not z:
        return rows
    if any(r["kind"] != "slice" for r in rows):
        raise S.BenchError("z ranges (source_z/target_z/test_z) need 2D slices (config.data.spatial_dims: 2)")
    depth: dict = {}
    for r in rows:
        key = (r["dataset"], r["subject"], r["modality"])
        depth[key] = max(depth.get(key, 0), int(r["slice"]) + 1)
    lo, hi = float(z[0]), float(z[1])
    keep = []
    for r in rows:
        f = (int(r["slice"]) + 0.5) / depth[(r["dataset"], r["subject"], r["modality"])]
        if lo <= f < hi or (hi >= 1.0 and f >= lo):
            keep.append(r)
    return keep


def fold_roles(index, cfg: C.Config, fold: S.Fold):
    """The fold's source / target / test rows (``mrgen.roles.assign`` + the fold's z ranges)."""
    from mrgen.roles import assign

    roles = assign(index, cfg)
    roles.source = zfilter(roles.source, fold.source_z)
    roles.target = zfilter(roles.target, fold.target_z)
    roles.test = zfilter(roles.test, fold.test_z)
    for name in ("source", "target", "test"):
        if not getattr(roles, name):
            raise S.BenchError(f"fold {fold.index}: no {name} rows (subjects {list(getattr(fold, name))}); "
                               f"check the subject ids against the curated index")
    return roles


def _save_pairs(path: Path, images: list, masks: list) -> None:
    io.write_npz(path, images=np.stack(images).astype(np.float16), masks=np.stack(masks).astype(np.uint8))


def load_pairs_file(path: Path) -> tuple[list, list]:
    with np.load(path, allow_pickle=False) as z:
        return list(z["images"].astype(np.float32)), list(z["masks"].astype(np.int64))


def _check_pairs(method: str, images: list, masks: list, context: set = frozenset()) -> None:
    if not images or len(images) != len(masks):
        raise ValueError(f"{method}: produced {len(images)} images and {len(masks)} masks; need the same, non-zero count")
    for im, m in zip(images, masks):
        if im.shape != m.shape or not np.all(np.isfinite(im)):
            raise ValueError(f"{method}: an image {im.shape} does not match its mask {m.shape} or holds NaN/Inf")
    if context and any(np.isin(m, sorted(context)).any() for m in masks):
        raise ValueError(f"{method}: its masks hold context label(s) {sorted(context)}, which condition the generator "
                         f"only; map them to 0 (mrgen.curate.labels.strip_context) before training a segmenter")


# 2: the engine's autoencoder and LDM train on no image of the fold's test subjects (mrgen.roles.unseen_tests; before,
# the train-split images of a fold's test subjects were among their unannotated data). Results of 1 are stale.
ENGINE_PROTOCOL = 2


def _fold_cfg(base: C.Config, fold: S.Fold) -> C.Config:
    return C._merge(base, {"run": {"source_subjects": list(fold.source), "target_subjects": list(fold.target),
                                   "test_subjects": list(fold.test)}})


def _engine_settings(spec: S.Spec, base: C.Config, fold: S.Fold) -> dict:
    """The engine's *resolved* config (preset + defaults + the ``engine`` tree), without its folder: a
    changed default in mrgen itself re-runs the engine methods, not only a changed benchmark file. Without its
    ``segment`` section: the benchmark's segmenters (the methods', the round labeller's) take ``config.segment``, which
    enters every stamp on its own, and no engine stage reads the engine's (so a preset's segment defaults do not
    restamp engine results they cannot change; before 2026-12-08 they did)."""
    from mrgen import contract

    ecfg = S.engine_config(spec, base, Path("engine"), fold)
    names = tuple(f.name for f in dataclasses.fields(ecfg) if f.name != "segment")
    return contract.stamped(contract.declared(ecfg, names))  # without NO_EFFECT keys


def stamps(spec: S.Spec, base: C.Config, fold: S.Fold, method: str, labels: dict) -> tuple[str, str]:
    """(train stamp: pairs + segmenter, eval stamp: + what the evaluation reports)."""
    cfg = _fold_cfg(base, fold)
    engine = {**_engine_settings(spec, base, fold), "protocol": ENGINE_PROTOCOL} if method in ENGINE_METHODS else None
    from mrgen import contract

    run_sec = contract.declared(cfg, ("run",))  # run.workdir, run.device: no effect on any result
    # segment keys added later (contract.ADDED) at their old-behaviour value leave the stamp as it was
    added = contract.ADDED
    segment = {k: v for k, v in C.to_dict(cfg.segment).items() if added.get(f"segment.{k}", object()) != v}
    train = S.stamp(fold.as_dict(), method, spec.methods[method], engine, segment, C.to_dict(cfg.data),
                    run_sec, int(spec.tree.get("seed", 0)), S.manifest_identity(spec))
    return train, S.stamp(train, spec.groups, labels, spec.tree.get("examples", 4), E_VERSION)


def cached_result(spec: S.Spec, base: C.Config, fold: S.Fold, method: str, labels: dict) -> dict | None:
    """The stored result of (fold, method) if it is current, else None."""
    path = base.workdir / "folds" / str(fold.index) / method / "result.json"
    if not path.exists():
        return None
    res = io.read_json(path)
    return res if res.get("stamp") == stamps(spec, base, fold, method, labels)[1] else None


def run_one(spec: S.Spec, base: C.Config, index, fold: S.Fold, method: str, labels: dict, log=_log) -> dict:
    """One (fold, method): pairs -> segmenter -> evaluation, each step cached by its stamp."""
    from mrgen.bench import evaluate as E
    from mrgen.curate.labels import context_values
    from mrgen.curate.labels import n_classes
    from mrgen.segment import train_segmenter

    folder = base.workdir / "folds" / str(fold.index) / method
    cfg = _fold_cfg(base, fold)
    params = spec.methods[method]
    seed = int(spec.tree.get("seed", 0))
    train_stamp, eval_stamp = stamps(spec, base, fold, method, labels)
    cached = cached_result(spec, base, fold, method, labels)
    if cached is not None:
        return cached
    roles = fold_roles(index, cfg, fold)
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "pairs.json"
    meta = io.read_json(meta_path) if meta_path.exists() else {}
    if meta.get("stamp") == train_stamp and (folder / "pairs.npz").exists():
        images, masks = load_pairs_file(folder / "pairs.npz")
    else:
        ctx = Ctx(cfg=cfg, roles=roles, out=folder, params=params, seed=seed, fold=fold, spec=spec,
                  budget_cpu_min=spec.budget(method), log=log)
        log(f"[bold]fold {fold.index} · {method}[/]: making training pairs")
        with Meter() as m:
            images, masks = METHODS[method](ctx)
        _check_pairs(method, images, masks, context_values(base.workdir / "curated"))
        _save_pairs(folder / "pairs.npz", images, masks)
        own = m.result()
        engine_parts = {k: v for k, v in ctx.compute.items() if k.startswith("engine") and v}
        ran = [v for v in engine_parts.values() if v.get("ran_now")]  # already inside the meter: count once
        own = {**own, **{k: round(max(0.0, own[k] - sum(v[k] for v in ran)), 2) for k in ("cpu_s", "wall_s")}}
        meta = {"stamp": train_stamp, "n_pairs": len(images), "shape": list(images[0].shape),
                "compute": {"pairs": own, **{k: {x: y for x, y in v.items() if x != "ran_now"} for k, v in engine_parts.items()}},
                "notes": {k: v for k, v in ctx.compute.items() if not k.startswith("engine")}}
        io.write_json(meta_path, meta)
    seg = folder / "segmenter"
    seg_meta = folder / "segmenter.json"
    seg_info = io.read_json(seg_meta) if seg_meta.exists() else {}
    if seg_info.get("stamp") != train_stamp or not (seg / "model.safetensors").exists():
        if seg.exists() and seg_info.get("stamp") not in (None, train_stamp):
            shutil.rmtree(seg)  # trained on other pairs/settings; its resume state would be wrong
        log(f"[bold]fold {fold.index} · {method}[/]: training the segmenter on {len(images)} pairs")
        with Meter() as m:
            train_segmenter(images, masks, n_classes(cfg.workdir / "curated"), cfg, seg, method)
        seg_info = {"stamp": train_stamp, "compute": m.result()}
        io.write_json(seg_meta, seg_info)
    del images, masks
    log(f"[bold]fold {fold.index} · {method}[/]: evaluating on {len(roles.test)} test rows")
    with Meter() as m:
        metrics = E.evaluate(seg, roles.test, cfg, folder / "eval", labels, spec.groups, int(spec.tree.get("examples", 4)))
    compute = {**meta["compute"], "segmenter": seg_info.get("compute"), "evaluate": m.result()}
    method_parts = [v for k, v in compute.items() if k == "pairs" or k.startswith("engine")]
    compute["method"] = combine(method_parts)
    compute["total"] = combine(method_parts + [compute["segmenter"]])
    budget = spec.budget(method)
    result = {
        "stamp": eval_stamp, "fold": fold.index, "method": method, "n_pairs": meta["n_pairs"], "shape": meta["shape"],
        "metrics": metrics, "compute": compute, "budget_cpu_min": budget,
        "over_budget": bool(budget and compute["method"]["cpu_s"] / 60 > budget), "notes": meta.get("notes", {}),
        "subjects": fold.as_dict(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    io.write_json(folder / "result.json", result)
    return result


def select_methods(spec: S.Spec, methods) -> list[str]:
    names = list(spec.methods)
    if not methods:
        return names
    want = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    bad = [m for m in want if m not in METHODS]
    if bad:
        raise S.BenchError(f"unknown method(s) {bad}; known: {', '.join(METHODS)}")
    missing = [m for m in want if m not in names]
    if missing:
        raise S.BenchError(f"method(s) {missing} are not in this benchmark ({', '.join(names)}); "
                           f"add them with methods.<name>={{}} as an override")
    return [m for m in names if m in want]


def run(bench_yaml: str | Path, workdir: str | Path | None = None, overrides: list | tuple = (), methods=None,
        log=_log) -> dict:
    """Run (or resume) a benchmark; returns ``{"report": bench.md, "json": bench.json, "summary": {...}}``."""
    from mrgen import curate
    from mrgen.bench import report
    from mrgen.curate.index import Index
    from mrgen.curate.labels import target_names

    spec = S.load(bench_yaml, overrides, METHODS)
    wd = Path(workdir) if workdir else Path("runs") / "bench" / spec.name
    wd.mkdir(parents=True, exist_ok=True)
    S.write_manifest(spec, wd)
    base = S.bench_config(spec, wd)
    C.save_resolved(base, wd)
    io.write_json(wd / "benchmark.json", {"name": spec.name, "definition": spec.tree, "data_root": str(spec.data_root),
                                           "folds": [f.as_dict() for f in spec.folds]})
    log(f"[bold]{spec.name}[/]: curating {spec.data_root} -> {wd / 'curated'}")
    with Meter() as m:
        curate.run(base)
    curate_compute = m.result()
    index = Index(wd / "curated" / "index.parquet")
    labels = target_names(wd / "curated")  # segmentation labels only: context labels are never reported
    chosen = select_methods(spec, methods)
    results = []
    for fold in spec.folds:
        for method in spec.methods:  # the report also shows current results of methods not chosen this time
            r = run_one(spec, base, index, fold, method, labels, log) if method in chosen else \
                cached_result(spec, base, fold, method, labels)
            if r is not None:
                results.append(r)
    out = report.write(spec, wd, results, labels, curate_compute)
    return out
