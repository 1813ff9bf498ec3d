"""``mrgen filter``: score every synthetic candidate, keep the best per mask.

Reads ``<workdir>/synth/candidates/<key>.npz``; writes ``<workdir>/filter/``:

* ``parts/<key>.json`` — the scores of one mask's candidates (the resume cache: a key whose
  part exists for the same scorer and candidate file is not scored again; parts in a
  ``filter.stale-*`` folder the pipeline moved aside are reused too when the file hash matches);
* ``calibration.json`` — ``filter.thresholds=calibrated``: the real source pairs' scores, their
  distribution and the thresholds derived from it (:mod:`mrgen.filter.calibrate`);
* ``scores.jsonl`` — one record per candidate: ``key, mask_id, candidate, seed, labels
  {label: {iou, conf}}, mean_iou, mean_conf, kept, reason``;
* ``kept.json`` — ``{"scorer", "thresholds", "calibration", "kept": [{key, candidate, mask_id, seed,
  mean_iou, mean_conf, relaxed, file}], "dropped": [{key, mask_id, reason}], "summary": {...},
  "adherence": {label: {"all", "kept", "n"}}}`` (:func:`adherence`);
  written only when at least ``filter.min_kept_fraction`` of the masks keep a candidate; below
  that the stage raises :class:`FilterStarved`, writes the would-be selection to ``starved.json``
  and removes an older ``kept.json``, so no later stage trains on a handful of pairs unawares;
* ``kept_vs_rejected.png`` — a few masks: kept and rejected candidates with mask contours.

Selection is recomputed from the cached scores on every run, so changing thresholds is cheap.

Under ``accelerate launch`` each process scores its share of the candidate files into ``parts/``;
process 0 then calibrates, selects and writes the files above from all parts (:mod:`mrgen.dist`),
so they are those of one process.

Context labels (conditioning-only, e.g. BraTS ``5: brain``) are scored like any organ by the
``classical`` and ``sam2`` scorers: the brain outline is an alignment check of the rendered
anatomy, under the same ``organ_iou``/``organ_conf`` thresholds, and it enters the means. The
``segmenter`` scorer cannot score them (segmenters never learn context labels), so for it they
are background (:func:`scored_mask`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mrgen import devices, dist, io
from mrgen.filter.calibrate import RUN_ONLY as CALIBRATION_RUN_ONLY
from mrgen.filter.scorers import build_scorer, score_any
from mrgen.filter.select import Thresholds, select_mask

FILTER = "filter"
STARVED = "starved.json"
# how a call got its result (masks resumed, real pairs scored now): returned and printed, never written, so kept.json
# is the same whether the filter ran once or was killed and resumed
RUN_ONLY = ("resumed_masks", "calibration_scored_now")


class FilterStarved(ValueError):
    """Too few masks kept a candidate (below ``filter.min_kept_fraction``); the message says what to change."""


def scorer_id(cfg) -> str:
    f = cfg.filter
    if f.scorer == "classical":
        return f"classical:{f.classical_method}:p{f.perturb}:s{cfg.run.seed}"
    if f.scorer == "sam2":
        return f"sam2:{Path(f.sam2_checkpoint).name}"
    return f"segmenter:{f.segmenter or 'oracle'}"


def scored_mask(scorer, mask: np.ndarray, context: set) -> np.ndarray:
    """The mask the scorer checks: context labels -> background for a segmenter scorer, kept otherwise."""
    from mrgen.curate.labels import strip_context

    return strip_context(mask, context) if getattr(scorer, "name", "") == "segmenter" else mask


def score_candidates(scorer, images: np.ndarray, mask: np.ndarray, key: str, meta: list | None = None) -> list[dict]:
    """Score one mask's candidates ``images`` (N, ...) against ``mask``; one record per candidate."""
    meta = meta or [{} for _ in range(len(images))]
    recs = []
    for c, img in enumerate(images):
        s = score_any(scorer, np.asarray(img, np.float32), mask)
        m = meta[c] if c < len(meta) else {}
        recs.append({
            "key": key, "mask_id": m.get("mask_id", ""), "candidate": c, "seed": m.get("seed"),
            "labels": {str(k): {"iou": round(float(v[0]), 4), "conf": round(float(v[1]), 4)} for k, v in sorted(s.items())},
            "mean_iou": round(float(np.mean([v[0] for v in s.values()])), 4) if s else 0.0,
            "mean_conf": round(float(np.mean([v[1] for v in s.values()])), 4) if s else 0.0,
        })
    return recs


def cache_folders(workdir: Path) -> list[Path]:
    """The filter folder, then the ``filter.stale-*`` folders the pipeline moved aside (newest first):
    where scores of the same pixels by the same scorer may already be."""
    stale = sorted(Path(workdir).glob(f"{FILTER}.stale-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [Path(workdir) / FILTER] + [p for p in stale if p.is_dir()]


def _cached_part(folders: list[Path], key: str, sid: str, digest: str) -> tuple[list | None, bool]:
    """(records, found in the current folder as they are) of candidate file ``key``: in the current folder a part
    from the same scorer (and file, when the part records it); in a moved-aside folder only one that records the
    same file hash. (None, False) when it must be scored."""
    for i, folder in enumerate(folders):
        part = folder / "parts" / f"{key}.json"
        try:
            cached = io.read_json(part) if part.exists() else None
        except ValueError:  # a corrupt part is re-scored
            cached = None
        if not cached or cached.get("scorer") != sid:
            continue
        if cached.get("file_hash", None if i else digest) == digest:  # parts before file_hash: trusted in place
            return cached["records"], i == 0 and "file_hash" in cached
    return None, False


def run(cfg) -> dict:
    from rich.progress import Progress

    from mrgen.curate.labels import context_values
    from mrgen.synthesize import load_candidates

    wd = cfg.workdir
    context = context_values(wd / "curated")
    files = sorted((wd / "synth" / "candidates").glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no candidates in {wd / 'synth' / 'candidates'}; run `mrgen synthesize -w {wd}` first")
    out = wd / FILTER
    parts = out / "parts"
    sid = scorer_id(cfg)
    folders = cache_folders(wd)
    scorer = None

    def score_one(images, mask, key, meta=None) -> list:
        nonlocal scorer
        scorer = scorer or build_scorer(cfg)  # built only when something is not cached
        return score_candidates(scorer, images, scored_mask(scorer, mask, context), key, meta)

    procs = dist.processes(devices.of(cfg))
    resumed, mine = 0, {}
    with Progress(transient=True, disable=not procs.main) as bar:
        task = bar.add_task(f"filter ({sid})", total=len(files))
        for f in procs.share(files):  # each process scores its share into parts/
            key, digest = f.stem, io.file_hash(f)
            recs, in_place = _cached_part(folders, key, sid, digest)
            if recs is not None:
                resumed += 1
            else:
                c = load_candidates(f)
                recs = score_one(c["images"], c["mask"], key, c.get("meta"))
            if not in_place:
                io.write_json(parts / f"{key}.json", {"schema": 1, "scorer": sid, "file_hash": digest, "records": recs})
            mine[key] = recs
            bar.advance(task, procs.world)
    resumed = procs.total(resumed)

    def select() -> dict:  # process 0, once every part is written
        calibration = None
        if cfg.filter.thresholds == "calibrated":
            from mrgen.filter.calibrate import calibrate

            t, calibration = calibrate(cfg, lambda img, m, key: score_one([img], m, key)[0], sid, out, folders)
        else:
            t = Thresholds.from_cfg(cfg.filter)
        all_recs = {f.stem: mine[f.stem] if f.stem in mine else io.read_json(parts / f"{f.stem}.json")["records"]
                    for f in files}
        return _select_and_write(cfg, all_recs, sid, files, resumed, t, calibration)

    return procs.on_main(select)


def _select_and_write(cfg, all_recs: dict, sid: str, files: list, resumed: int, t: Thresholds,
                      calibration: dict | None) -> dict:
    f = cfg.filter
    out = cfg.workdir / FILTER
    kept, dropped, outcomes = [], [], {"kept": 0, "relaxed": 0, "dropped": 0}
    lines = []
    low = rank_floor(f, calibration)
    for key, recs in all_recs.items():
        chosen, outcome = select_mask(recs, t, keep=f.keep, relax=f.relax, relax_keep=f.relax_keep, top=f.top, floor=low)
        outcomes[outcome] += 1
        for r in chosen:
            kept.append({"key": key, "candidate": r["candidate"], "mask_id": r["mask_id"], "seed": r["seed"],
                         "mean_iou": r["mean_iou"], "mean_conf": r["mean_conf"], "relaxed": outcome == "relaxed",
                         "file": f"candidates/{key}.npz"})
        if outcome == "dropped":
            best = max(recs, key=lambda r: (r["mean_iou"], r["mean_conf"]), default=None)
            dropped.append({"key": key, "mask_id": best["mask_id"] if best else "",
                            "reason": f"no candidate passes even relaxed thresholds (best: {best['reason']})" if best else "no candidates"})
        lines += [json.dumps(r) for r in sorted(recs, key=lambda r: r["candidate"])]
    with io.atomic_path(out / "scores.jsonl") as tmp:
        tmp.write_text("".join(ln + "\n" for ln in lines))
    masks_with = outcomes["kept"] + outcomes["relaxed"]
    summary = {"masks": len(all_recs), "masks_kept": outcomes["kept"], "masks_relaxed": outcomes["relaxed"],
               "masks_dropped": outcomes["dropped"], "kept_fraction": round(masks_with / max(1, len(all_recs)), 4),
               "candidates": len(lines), "kept": len(kept), "resumed_masks": resumed}
    if calibration:
        summary["calibration_scored_now"] = calibration["scored_now"]
    history = RUN_ONLY + CALIBRATION_RUN_ONLY
    report = {"schema": 1, "scorer": sid, "thresholds": t.as_dict(), "threshold_mode": f.thresholds,
              "calibration": {k: v for k, v in calibration.items() if k not in history} if calibration else calibration,
              "selection": {"mode": f.selection, "keep": f.keep, "relax": f.relax, "relax_keep": f.relax_keep,
                            "top": f.top, "min_kept_fraction": f.min_kept_fraction,
                            **({"floor": low.as_dict()} if low is not None else {})},
              "kept": kept, "dropped": dropped, "summary": {k: v for k, v in summary.items() if k not in history},
              "adherence": adherence(all_recs, kept)}
    if summary["kept_fraction"] < f.min_kept_fraction:
        io.write_json(out / STARVED, report)
        (out / "kept.json").unlink(missing_ok=True)  # a selection of other settings must not reach export
        raise FilterStarved(starved_message(cfg, summary, t, calibration, len(lines)))
    (out / STARVED).unlink(missing_ok=True)
    io.write_json(out / "kept.json", report)
    fig = None
    if f.figure_masks > 0:
        try:
            fig = figure(cfg.workdir, all_recs, files, f.figure_masks)
        except Exception as exc:  # a figure must never fail the stage
            summary["figure_error"] = f"{type(exc).__name__}: {exc}"
    summary["figure"] = str(fig) if fig else ""
    return summary


def adherence(all_recs: dict, kept: list) -> dict:
    """Mask adherence per label: the scorer's IoU of the rendered structure against the mask it was conditioned
    on, averaged over ALL candidates (``all``: what the renderer does, before any selection) and over the kept
    ones (``kept``); ``n`` = candidates whose mask holds the label. Context labels (the brain outline) included."""
    chosen = {(k["key"], k["candidate"]) for k in kept}
    per: dict = {}
    for key, recs in all_recs.items():
        for r in recs:
            for label, s in r["labels"].items():
                d = per.setdefault(label, {"all": [], "kept": []})
                d["all"].append(float(s["iou"]))
                if (key, r["candidate"]) in chosen:
                    d["kept"].append(float(s["iou"]))
    mean = lambda v: round(float(np.mean(v)), 4) if v else None  # noqa: E731
    return {label: {"all": mean(d["all"]), "kept": mean(d["kept"]), "n": len(d["all"])} for label, d in sorted(per.items())}


def rank_floor(f, calibration: dict | None) -> Thresholds | None:
    """``filter.selection=rank``'s floor (None for ``thresholds``): a mean IoU bar only, at the chance level of the
    calibration's displaced real pairs (:func:`mrgen.filter.calibrate.floor`); with absolute thresholds,
    ``filter.mean_iou - filter.relax``."""
    if f.selection != "rank":
        return None
    bar = calibration["floor"]["mean_iou"] if calibration else f.mean_iou - f.relax
    return Thresholds(0.0, 0.0, float(bar), 0.0)


def starved_message(cfg, summary: dict, t: Thresholds, calibration: dict | None, candidates: int) -> str:
    """One paragraph: how many masks kept a candidate, under which thresholds, and what to change."""
    f, wd = cfg.filter, cfg.workdir
    n, k = summary["masks"], summary["masks_kept"] + summary["masks_relaxed"]
    if calibration:
        how = (f"calibrated: quantile {calibration['quantile']} of {calibration['items']} real "
               f"{calibration['modality']} pairs' scores")
        change = (f"lower filter.calibration_quantile (now {f.calibration_quantile}, e.g. "
                  f"{round(f.calibration_quantile / 2, 3)})")
    else:
        how = "absolute: filter.organ_iou / organ_conf / mean_iou / mean_conf"
        change = "set filter.thresholds=calibrated (quantiles of the scorer's scores on real pairs)"
    return (f"the filter kept a candidate for {k} of {n} masks ({100 * k / max(1, n):.1f} %), below "
            f"filter.min_kept_fraction={f.min_kept_fraction}; training a segmenter on so few pairs would be silently "
            f"poor. Thresholds ({how}): {t.describe()}; second chance: "
            f"{t.second.describe() if t.second is not None else f'relaxed by {f.relax}'}. To change: {change}; "
            f"or raise filter.relax (now {f.relax}); or render more candidates per mask (sample.candidates, now "
            f"{round(candidates / max(1, n))}); or accept so few with filter.min_kept_fraction=0. The scores are kept "
            f"({wd / FILTER / 'scores.jsonl'}, the would-be selection in {wd / FILTER / STARVED}): a rerun with other "
            f"thresholds does not score again.")


def figure(workdir: Path, all_recs: dict, files: list, n_masks: int = 4, n_rej: int = 3) -> Path | None:
    """``filter/kept_vs_rejected.png``: per row one mask, its kept then its worst rejected candidates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrgen.synthesize import load_candidates

    by_key = {f.stem: f for f in files}
    keys = [k for k, r in all_recs.items() if any(x["kept"] for x in r) and not all(x["kept"] for x in r)]
    keys = (keys + [k for k in all_recs if k not in keys])[:n_masks]
    if not keys:
        return None
    rows = []
    for k in keys:
        recs = all_recs[k]
        kept = [r for r in recs if r["kept"]]
        rej = sorted([r for r in recs if not r["kept"]], key=lambda r: r["mean_iou"])[:n_rej]
        rows.append((k, kept + rej))
    ncol = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.9 * ncol, 2.0 * len(rows)), squeeze=False)
    for i, (k, recs) in enumerate(rows):
        c = load_candidates(by_key[k])
        mask = c["mask"]
        z = int(np.argmax((mask != 0).reshape(mask.shape[0], -1).sum(1))) if mask.ndim == 3 else None
        mk = mask[z] if z is not None else mask
        for j in range(ncol):
            ax = axes[i, j]
            ax.axis("off")
            if j >= len(recs):
                continue
            r = recs[j]
            img = c["images"][r["candidate"]]
            img = img[z] if z is not None else img
            ax.imshow(img.T, origin="lower", cmap="gray", vmin=-1, vmax=1)
            for lab in np.unique(mk[mk > 0]):
                ax.contour((mk == lab).T.astype(float), levels=[0.5], colors=[plt.cm.tab10(int(lab) % 10)], linewidths=0.6, origin="lower")
            col = "green" if r["kept"] else "red"
            ax.set_title(f"{'kept' if r['kept'] else 'rejected'} #{r['candidate']}\nIoU {r['mean_iou']:.2f} conf {r['mean_conf']:.2f}",
                         fontsize=6, color=col)
    fig.suptitle("filter: kept (green) vs rejected (red) candidates; contours = conditioning mask", fontsize=8)
    fig.tight_layout()
    path = workdir / FILTER / "kept_vs_rejected.png"
    with io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
