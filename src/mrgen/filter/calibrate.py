"""Calibrated filter thresholds (``filter.thresholds=calibrated``): the scorer judged by its own scores on real pairs.

A prompted scorer's absolute IoU depends on the data (thin rings, tumours and 6-mm voxels score low even
when image and mask agree: docs/filter.md), so fixed thresholds tuned on one dataset starve another. Here
the same scorer scores up to ``filter.calibration_items`` real annotated **source** pairs of the run
(:func:`mrgen.roles.assign` ``.source``: curated images with their own masks, context labels kept as the
filter scores them; for an in-domain run these are target-modality pairs) and the thresholds become the
``filter.calibration_quantile`` (``q``) of those scores, computed with :func:`numpy.quantile` (linear
interpolation) and floored to 4 decimals so a real pair that scores exactly the quantile passes:

* per label ``L``: ``iou_L`` = ``q``-quantile of the real pairs' IoU of ``L``, ``conf_L`` likewise;
* ``organ_iou`` / ``organ_conf`` (labels no real pair has): ``q``-quantile of every label's scores pooled;
* ``mean_iou`` / ``mean_conf``: ``q``-quantile of the real pairs' mean IoU / mean confidence.

So with ``q = 0.25`` a candidate passes a label when it scores at least as well as the lower quartile of
real, aligned pairs. The subset is drawn with ``run.seed`` among source items that hold a label.
``filter/calibration.json`` keeps the distribution, the thresholds and every real pair's scores (the
cache: an item with the same id, pixels and scorer is not scored again, also from a ``filter.stale-*``
folder the pipeline moved aside).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from mrgen import io
from mrgen.filter.select import Thresholds

CALIBRATION = "calibration.json"
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


class CalibrationError(ValueError):
    """No real annotated pair could be scored, so there is nothing to calibrate on."""


def pick_rows(rows: list[dict], n: int, seed: int) -> list[dict]:
    """Up to ``n`` of ``rows`` that hold a label: a seeded subset, in id order (the index's order does not matter)."""
    pool = sorted((r for r in rows if len(r.get("labels") or ()) > 0), key=lambda r: r["id"])
    if len(pool) <= n:
        return pool
    idx = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return [pool[i] for i in sorted(int(i) for i in idx)]


def _floor4(x: float) -> float:
    return math.floor(float(x) * 1e4 + 1e-6) / 1e4


def _spread(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    out = {f"q{int(round(q * 100)):02d}": round(float(np.quantile(a, q)), 4) for q in QUANTILES}
    out.update(min=round(float(a.min()), 4), max=round(float(a.max()), 4))
    return out


def thresholds_from(records: list[dict], q: float) -> tuple[Thresholds, dict]:
    """Thresholds at quantile ``q`` of real-pair ``records`` (``labels {label: {iou, conf}}, mean_iou, mean_conf``)
    and the measured distribution ``{"labels": {label: {n, iou: {q10..q90, min, max}, conf: {...}}}, "mean": {...}}``."""
    scored = [r for r in records if r.get("labels")]
    if not scored:
        raise CalibrationError("no real pair could be scored")
    per: dict[str, tuple[list, list]] = {}
    for r in scored:
        for lab, s in r["labels"].items():
            per.setdefault(str(lab), ([], []))
            per[str(lab)][0].append(s["iou"])
            per[str(lab)][1].append(s["conf"])
    labels = {lab: (_floor4(np.quantile(i, q)), _floor4(np.quantile(c, q))) for lab, (i, c) in sorted(per.items())}
    pooled_i = [v for i, _ in per.values() for v in i]
    pooled_c = [v for _, c in per.values() for v in c]
    means_i, means_c = [r["mean_iou"] for r in scored], [r["mean_conf"] for r in scored]
    t = Thresholds(_floor4(np.quantile(pooled_i, q)), _floor4(np.quantile(pooled_c, q)),
                   _floor4(np.quantile(means_i, q)), _floor4(np.quantile(means_c, q)), labels)
    dist = {"labels": {lab: {"n": len(i), "iou": _spread(i), "conf": _spread(c)} for lab, (i, c) in sorted(per.items())},
            "mean": {"n": len(scored), "iou": _spread(means_i), "conf": _spread(means_c)}}
    return t, dist


def _cached_scores(folders: list[Path], sid: str) -> dict:
    """``{(id, digest): record}`` from the calibration files of ``folders`` scored by scorer ``sid``."""
    out: dict = {}
    for folder in reversed(folders):  # the first folder (the current one) wins
        p = folder / CALIBRATION
        try:
            data = io.read_json(p) if p.exists() else None
        except ValueError:  # a corrupt cache is re-scored, never trusted
            data = None
        if data and data.get("scorer") == sid:
            out.update({(r["id"], r["digest"]): r for r in data.get("scores", [])})
    return out


def calibrate(cfg, score: Callable[[np.ndarray, np.ndarray, str], dict], sid: str, out: Path,
              caches: list[Path]) -> tuple[Thresholds, dict]:
    """Score the run's real source pairs with ``score(image, mask, id) -> record`` (the candidates' scorer) and
    derive :class:`Thresholds`; writes ``out/calibration.json`` and returns (thresholds, its summary without the
    per-pair scores). ``caches``: folders whose ``calibration.json`` may hold these pairs' scores already.
    Images ``(H, W)`` or ``(Z, H, W)`` float32 in [-1, 1] at the item shape, masks int64 with context labels."""
    from mrgen.curate.index import Index
    from mrgen.pairs import real_pairs
    from mrgen.roles import assign

    f = cfg.filter
    source = assign(Index(cfg.workdir / "curated" / "index.parquet"), cfg).source
    rows = pick_rows(source, int(f.calibration_items), int(cfg.run.seed))
    if not rows:
        raise CalibrationError(
            f"filter.thresholds=calibrated scores real annotated {cfg.run.source_modality} pairs, but none of the "
            f"{len(source)} source items holds a label; check the manifest's masks, or set filter.thresholds=absolute "
            f"(and filter.organ_iou / organ_conf / mean_iou / mean_conf)")
    images, masks = real_pairs(cfg, rows, keep_context=True)  # the filter scores context labels too
    cached = _cached_scores(caches, sid)
    scores, rescored = [], 0
    for row, img, m in zip(rows, images, masks):
        digest = io.array_hash(img) + io.array_hash(m)
        rec = cached.get((row["id"], digest))
        if rec is None:
            s = score(img, m, row["id"])
            rec = {"id": row["id"], "digest": digest, "labels": s["labels"], "mean_iou": s["mean_iou"],
                   "mean_conf": s["mean_conf"]}
            rescored += 1
        scores.append(rec)
    try:
        t, dist = thresholds_from(scores, float(f.calibration_quantile))
    except CalibrationError:
        raise CalibrationError(
            f"filter.thresholds=calibrated: the scorer found no organ to score in any of {len(rows)} real "
            f"{cfg.run.source_modality} pairs (organs under 4 pixels are skipped); use a larger data.image_size or "
            f"set filter.thresholds=absolute") from None
    summary = {"mode": "calibrated", "scorer": sid, "quantile": float(f.calibration_quantile), "seed": int(cfg.run.seed),
               "modality": cfg.run.source_modality, "items_requested": int(f.calibration_items),
               "items_available": len([r for r in source if r.get("labels")]), "items": len(rows),
               "unscored": sum(1 for r in scores if not r["labels"]), "scored_now": rescored,
               "distribution": dist, "thresholds": t.as_dict()}
    io.write_json(out / CALIBRATION, {**summary, "scores": scores})
    return t, summary
