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
real, aligned pairs.

**The second chance** (a mask none of whose candidates passes strictly): the same real pairs are scored
again with their mask **displaced** by ``DISPLACE`` of the image size (8 px at 64 px) in a seeded direction
(one of 8), the pairs a render that ignores its mask resembles. Each second-chance threshold is the lower of
(the strict one - ``filter.relax``) and the ``filter.misaligned_quantile`` (``p``, default 0.9) of the
displaced pairs' scores: a render passes when it follows its mask better than ``p`` of real images follow a
displaced one. Renders score below real pairs (blur, few steps), so the strict bar alone starves data the
scorer finds hard (the phantom demo kept 6 of 48 masks at ``q = 0.25``); the displaced pairs set the bar at
what "does not follow the mask" looks like for this scorer on this data. The subset is drawn with ``run.seed`` among source items that hold a label.
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

RUN_ONLY = ("scored_now",)  # how a call got there (cached scores or not), not what it found: returned, not written

CALIBRATION = "calibration.json"
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
DISPLACE = 0.125  # displaced masks for the second chance: shifted by this fraction of the image size


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


def displaced(mask: np.ndarray, seed: int) -> np.ndarray:
    """``mask`` shifted in-plane (last two axes) by ``DISPLACE`` of its size in one of 8 directions drawn with
    ``seed``; what leaves the image is lost, what enters is background."""
    from scipy import ndimage

    angle = np.random.default_rng(seed).integers(8) * np.pi / 4
    d = max(2.0, round(DISPLACE * mask.shape[-1]))
    shift = [0.0] * (mask.ndim - 2) + [round(d * np.sin(angle)), round(d * np.cos(angle))]
    return ndimage.shift(np.asarray(mask), shift, order=0, mode="constant", cval=0).astype(mask.dtype)


def second_chance(t: Thresholds, displaced_records: list[dict], p: float, relax: float) -> tuple[Thresholds, dict]:
    """The second-chance thresholds: per value the lower of ``t`` - ``relax`` and the ``p``-quantile of the
    displaced real pairs' scores (``thresholds_from``); and that distribution. Without scorable displaced pairs:
    ``t`` - ``relax``."""
    low = t.relaxed(relax)
    try:
        mis, dist = thresholds_from(displaced_records, p)
    except CalibrationError:
        return low, {}
    labels = {lab: (min(i, mis.organ(lab)[0]), min(c, mis.organ(lab)[1])) for lab, (i, c) in low.labels.items()}
    return Thresholds(min(low.organ_iou, mis.organ_iou), min(low.organ_conf, mis.organ_conf),
                      min(low.mean_iou, mis.mean_iou), min(low.mean_conf, mis.mean_conf), labels), dist


def floor(displaced_records: list[dict], q: float) -> Thresholds:
    """``filter.selection=rank``'s floor: mean IoU at least the ``q``-quantile of the displaced real pairs' mean
    IoU (``filter.floor_quantile``; 0.5: better than the median real image with a displaced mask); no per-label or
    confidence bar, so a thin or small label that the scorer recovers poorly does not drop its mask. Without
    scorable displaced pairs: no floor (0)."""
    vals = [r["mean_iou"] for r in displaced_records if r.get("labels")]
    return Thresholds(0.0, 0.0, _floor4(np.quantile(vals, q)) if vals else 0.0, 0.0)


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
    scores, moved, rescored = [], [], 0
    seed = int(cfg.run.seed)
    for k, (row, img, m) in enumerate(zip(rows, images, masks)):
        for rid, mk, out_list in ((row["id"], m, scores), (row["id"] + "~displaced", displaced(m, seed + k), moved)):
            digest = io.array_hash(img) + io.array_hash(mk)
            rec = cached.get((rid, digest))
            if rec is None:
                s = score(img, mk, rid)
                rec = {"id": rid, "digest": digest, "labels": s["labels"], "mean_iou": s["mean_iou"],
                       "mean_conf": s["mean_conf"]}
                rescored += 1
            out_list.append(rec)
    try:
        t, dist = thresholds_from(scores, float(f.calibration_quantile))
    except CalibrationError:
        raise CalibrationError(
            f"filter.thresholds=calibrated: the scorer found no organ to score in any of {len(rows)} real "
            f"{cfg.run.source_modality} pairs (organs under 4 pixels are skipped); use a larger data.image_size or "
            f"set filter.thresholds=absolute") from None
    second, moved_dist = second_chance(t, moved, float(f.misaligned_quantile), float(f.relax))
    t = Thresholds(t.organ_iou, t.organ_conf, t.mean_iou, t.mean_conf, t.labels, second)
    low = floor(moved, float(f.floor_quantile))
    summary = {"mode": "calibrated", "scorer": sid, "quantile": float(f.calibration_quantile), "seed": int(cfg.run.seed),
               "modality": cfg.run.source_modality, "items_requested": int(f.calibration_items),
               "items_available": len([r for r in source if r.get("labels")]), "items": len(rows),
               "unscored": sum(1 for r in scores if not r["labels"]), "scored_now": rescored,
               "distribution": dist, "misaligned_quantile": float(f.misaligned_quantile), "displace": DISPLACE,
               "displaced_distribution": moved_dist, "thresholds": t.as_dict(),
               "floor": {"quantile": float(f.floor_quantile), "mean_iou": low.mean_iou}}
    io.write_json(out / CALIBRATION, {"schema": 1, **{k: v for k, v in summary.items() if k not in RUN_ONLY},
                                      "scores": scores + moved})
    return t, summary
