"""The audit stage: ``mrgen audit -w RUN`` and the ``audit`` stage of ``mrgen run`` (after filter and segment).

Writes ``audit/audit.json`` (``"schema": 1``; layout in docs/audit.md), ``audit/{memorisation,fidelity,
diversity,faithfulness}.png`` and, when the run has been evaluated, refreshes ``report.md`` (its
"Trust audit" section, :mod:`mrgen.audit.section`).
"""

from __future__ import annotations

import time

import numpy as np

from mrgen import io
from mrgen.audit import diversity as div
from mrgen.audit import faithfulness as faith
from mrgen.audit import fidelity as fid
from mrgen.audit import plots
from mrgen.audit.memorisation import memorisation
from mrgen.audit.sets import load_all, planes
from mrgen.config import Config

SCHEMA = 1
FOLDER = "audit"
TOP_PAIRS = 20  # nearest-neighbour pairs kept in audit.json (plus every flagged one)


def _features(cfg: Config, images: list) -> np.ndarray:
    from mrgen.evaluate import features

    if not images:
        return np.zeros((0, 1))
    return features(images, cfg.evaluate.features, cfg.evaluate.features_arch)


def _plane_keys(ids: list, owner: list) -> list:
    """``(item id, k)`` for each 2D plane: the k-th plane of that item."""
    seen: dict = {}
    out = []
    for o in owner:
        out.append((ids[o], seen.get(o, 0)))
        seen[o] = seen.get(o, 0) + 1
    return out


def _segmenter(cfg: Config):
    from mrgen.segment import load_segmenter

    folder = cfg.workdir / "segment" / cfg.audit.segmenter
    return load_segmenter(folder) if (folder / "model.safetensors").exists() else None


def _groups(cfg: Config, ids: list) -> list:
    """2D candidates of each kept mask among ``ids`` (``key#candidate``), every candidate of the mask."""
    from mrgen.synthesize import load_candidates

    keys = sorted({i.rsplit("#", 1)[0] for i in ids})
    return [planes(list(load_candidates(cfg.workdir / "synth" / "candidates" / f"{k}.npz")["images"]))[0] for k in keys]


def _global(cfg: Config, fs: np.ndarray, fr: np.ndarray) -> dict:
    from mrgen.evaluate.metrics import frechet_distance, kid

    out: dict = {"synthetic_images": int(len(fs)), "real_images": int(len(fr))}
    if len(fs) >= 2 and len(fr) >= 2:
        out.update({"FD": frechet_distance(fs, fr), "KID": kid(fs, fr)})
    iq = cfg.workdir / "eval" / "image_quality.json"
    if iq.exists():  # the evaluate stage's FD / KID on its own (larger) sets, when the run has one
        out["evaluate"] = {k: v for k, v in io.read_json(iq).items() if k.startswith(("FD-", "KID-", "synthetic_", "real_"))}
    return out


def audit(cfg: Config) -> dict:
    """Every check of the audit; returns the ``audit.json`` record (figures written beside it)."""
    from mrgen.curate.labels import target_names

    wd, a = cfg.workdir, cfg.audit
    out_dir = wd / FOLDER
    labels = target_names(wd / "curated")
    sets = load_all(cfg)
    syn, train, held, target = (sets[k] for k in ("synthetic", "training", "held_out", "target"))
    if not len(syn):  # recorded, not raised: the run goes on to export (which warns about the empty dataset)
        rec = {"schema": SCHEMA, "skipped": f"{wd / 'filter' / 'kept.json'} keeps no candidate: nothing to audit"}
        rec["headline"] = {"skipped": rec["skipped"]}
        io.write_json(out_dir / "audit.json", rec)
        return rec
    s2, _, s_own = planes(syn.images)
    t2, _, t_own = planes(train.images)
    h2, _, _ = planes(held.images)
    g2, _, g_own = planes(target.images)
    # features once per image: a real target image that is also in the training subset reuses its features
    t_keys = {key: i for i, key in enumerate(_plane_keys(train.ids, t_own))}
    g_keys = _plane_keys(target.ids, g_own)
    g_new = [i for i, key in enumerate(g_keys) if key not in t_keys]
    feats = _features(cfg, s2 + t2 + h2 + [g2[i] for i in g_new])
    fs, ft, fh, f_new = np.split(feats, np.cumsum([len(s2), len(t2), len(h2)]))
    new_at = {i: k for k, i in enumerate(g_new)}
    fg = np.stack([f_new[new_at[i]] if i in new_at else ft[t_keys[key]] for i, key in enumerate(g_keys)]) \
        if g_keys else np.zeros((0, feats.shape[1]))

    mem = memorisation(s2, t2, h2, fs, ft, fh, a.copy_quantile, a.copy_margin)
    values = mem.pop("values")
    fig_mem = plots.memorisation(out_dir / "memorisation.png", mem, values, s2, t2, a.figure_pairs) \
        if a.figure_pairs else None
    mem["pairs"] = [{**p, "synthetic": syn.ids[s_own[p["synthetic"]]], "training": train.ids[t_own[p["training"]]]}
                    for i, p in enumerate(mem["pairs"]) if i < TOP_PAIRS or p["flagged"]]
    mem["flagged_ids"] = [p["synthetic"] for p in mem["pairs"] if p["flagged"]]

    model = _segmenter(cfg)
    views: dict = {}
    if model is not None:
        from mrgen.segment import predict

        views["segmenter"] = (target.images, [predict(model, im) for im in target.images])
    if len(held):
        views["oracle"] = (held.images, held.masks)
    fidelity = fid.fidelity((syn.images, syn.masks), views, labels)
    shown = "oracle" if "oracle" in views else next(iter(views), None)
    fig_fid = plots.fidelity(out_dir / "fidelity.png", fid.histograms((syn.images, syn.masks), views[shown], labels),
                             shown) if shown else None

    diversity = div.diversity(_groups(cfg, syn.ids), s2, g2, a.pairs, a.seed)
    fig_div = plots.diversity(out_dir / "diversity.png", diversity)

    scores = faith.filter_scores(wd)
    seg = faith.segment_back(model, syn.images, syn.masks, labels, a.min_dice) if model is not None else None
    fig_faith = plots.faithfulness(out_dir / "faithfulness.png", scores, seg)
    if seg is not None:
        seg["flagged_ids"] = [syn.ids[i] for i in seg.pop("flagged_index")]
        seg.pop("values")
    scores.pop("values", None)

    rec = {
        "schema": SCHEMA,
        "run": {"source_modality": cfg.run.source_modality, "target_modality": cfg.run.target_modality,
                "workdir": str(wd)},
        "sizes": {k: {"audited": len(v), "of": v.total, "images_2d": n} for (k, v), n in
                  zip(sets.items(), (len(s2), len(t2), len(h2), len(g2)))},
        "settings": {k: getattr(a, k) for k in ("max_images", "max_reference", "max_real", "copy_quantile", "copy_margin", "pairs",
                                                "min_dice", "segmenter", "seed")},
        "memorisation": mem,
        "fidelity": {"views": {"segmenter": f"labels of the real target images predicted by segment/{a.segmenter}",
                               "oracle": "held-out test images with their manual masks (ORACLE VIEW: evaluation "
                                         "masks, not available in real use)"},
                     "labels": fidelity, "global": _global(cfg, fs, fg)},
        "diversity": diversity,
        "faithfulness": {"filter": scores,
                         "segmenter": seg if seg is not None else {"skipped": f"no segment/{a.segmenter}/model.safetensors"}},
        "figures": {k: str(p.relative_to(wd)) for k, p in (("memorisation", fig_mem), ("fidelity", fig_fid),
                                                              ("diversity", fig_div), ("faithfulness", fig_faith)) if p},
    }
    rec["headline"] = headline(rec)
    io.write_json(out_dir / "audit.json", rec)
    return rec


def headline(rec: dict) -> dict:
    """The few numbers a reader of the dataset card needs (docs/audit.md)."""
    mem, fidelity = rec["memorisation"], rec["fidelity"]
    view = "oracle" if "oracle" in fidelity["labels"] else next(iter(fidelity["labels"]), None)
    out = {"near_copies": f"{mem['flagged']} of {mem['compared']['synthetic']}",
           "nn_ssim_synthetic_max": mem["synthetic"]["ssim"].get("max"),
           "nn_ssim_held_out_max": mem["held_out"]["ssim"].get("max")}
    if view:
        out[f"mean_diff_sd_{view}"] = {k: (round(v["mean_diff_sd"], 3) if v.get("mean_diff_sd") is not None else None)
                                       for k, v in fidelity["labels"][view].items()}
    d = rec["diversity"]
    out["diversity"] = {k: round(d[k]["mean"], 4) for k in ("within_mask", "kept", "real") if d[k].get("pairs")}
    out["diversity_metric"] = d["kept"].get("metric")
    if "FD" in fidelity["global"]:
        out["FD"] = round(fidelity["global"]["FD"], 4)
    seg = rec["faithfulness"]["segmenter"]
    if "mean_dice" in seg:
        out["segmenter_dice_median"] = seg["mean_dice"].get("median")
        out["segmenter_flagged"] = f"{seg['flagged']} of {seg['images']}"
    return out


def run(cfg: Config) -> dict:
    """The stage: :func:`audit`, then ``report.md`` again when the run has an evaluation summary."""
    t0 = time.perf_counter()
    rec = audit(cfg)
    summary = cfg.workdir / "eval" / "summary.json"
    if summary.exists():
        from mrgen.report import write_report

        iq = cfg.workdir / "eval" / "image_quality.json"
        write_report(cfg, io.read_json(summary), io.read_json(iq) if iq.exists() else None)
    return {"audit": str(cfg.workdir / FOLDER / "audit.json"), **rec["headline"],
            "seconds": round(time.perf_counter() - t0, 1)}
