"""``mrgen filter``: score every synthetic candidate, keep the best per mask.

Reads ``<workdir>/synth/candidates/<key>.npz``; writes ``<workdir>/filter/``:

* ``parts/<key>.json`` — the scores of one mask's candidates (the resume cache: a key whose
  part exists for the same scorer is not scored again);
* ``scores.jsonl`` — one record per candidate: ``key, mask_id, candidate, seed, labels
  {label: {iou, conf}}, mean_iou, mean_conf, kept, reason``;
* ``kept.json`` — ``{"scorer", "thresholds", "kept": [{key, candidate, mask_id, seed, mean_iou,
  mean_conf, relaxed, file}], "dropped": [{key, mask_id, reason}], "summary": {...}}``;
* ``kept_vs_rejected.png`` — a few masks: kept and rejected candidates with mask contours.

Selection is recomputed from the cached scores on every run, so changing thresholds is cheap.

Context labels (conditioning-only, e.g. BraTS ``5: brain``) are scored like any organ by the
``classical`` and ``sam2`` scorers: the brain outline is an alignment check of the rendered
anatomy, under the same ``organ_iou``/``organ_conf`` thresholds, and it enters the means. The
``segmenter`` scorer cannot score them (segmenters never learn context labels), so for it they
are background (:func:`scored_mask`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mrgen import io
from mrgen.filter.scorers import build_scorer, score_any
from mrgen.filter.select import Thresholds, select_mask

FILTER = "filter"


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
        t0 = time.perf_counter()
        s = score_any(scorer, np.asarray(img, np.float32), mask)
        m = meta[c] if c < len(meta) else {}
        recs.append({
            "key": key, "mask_id": m.get("mask_id", ""), "candidate": c, "seed": m.get("seed"),
            "labels": {str(k): {"iou": round(float(v[0]), 4), "conf": round(float(v[1]), 4)} for k, v in sorted(s.items())},
            "mean_iou": round(float(np.mean([v[0] for v in s.values()])), 4) if s else 0.0,
            "mean_conf": round(float(np.mean([v[1] for v in s.values()])), 4) if s else 0.0,
            "sec": round(time.perf_counter() - t0, 4),
        })
    return recs


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
    scorer = None
    all_recs: dict[str, list] = {}
    resumed = 0
    with Progress(transient=True) as bar:
        task = bar.add_task(f"filter ({sid})", total=len(files))
        for f in files:
            key = f.stem
            part = parts / f"{key}.json"
            cached = io.read_json(part) if part.exists() else None
            if cached and cached.get("scorer") == sid:
                all_recs[key] = cached["records"]
                resumed += 1
            else:
                scorer = scorer or build_scorer(cfg)
                c = load_candidates(f)
                recs = score_candidates(scorer, c["images"], scored_mask(scorer, c["mask"], context), key, c.get("meta"))
                io.write_json(part, {"scorer": sid, "records": recs})
                all_recs[key] = recs
            bar.advance(task)
    return _select_and_write(cfg, all_recs, sid, files, resumed)


def _select_and_write(cfg, all_recs: dict, sid: str, files: list, resumed: int) -> dict:
    f = cfg.filter
    t = Thresholds.from_cfg(f)
    out = cfg.workdir / FILTER
    kept, dropped, outcomes = [], [], {"kept": 0, "relaxed": 0, "dropped": 0}
    lines = []
    for key, recs in all_recs.items():
        chosen, outcome = select_mask(recs, t, keep=f.keep, relax=f.relax, relax_keep=f.relax_keep, top=f.top)
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
    secs = [r["sec"] for recs in all_recs.values() for r in recs if "sec" in r]
    summary = {"masks": len(all_recs), "masks_kept": outcomes["kept"], "masks_relaxed": outcomes["relaxed"],
               "masks_dropped": outcomes["dropped"], "candidates": len(lines), "kept": len(kept), "resumed_masks": resumed,
               "sec_per_candidate": round(float(np.mean(secs)), 4) if secs else None}
    io.write_json(out / "kept.json", {
        "schema": 1, "scorer": sid, "thresholds": t.__dict__,
        "selection": {"keep": f.keep, "relax": f.relax, "relax_keep": f.relax_keep, "top": f.top},
        "kept": kept, "dropped": dropped, "summary": summary,
    })
    fig = None
    if f.figure_masks > 0:
        try:
            fig = figure(cfg.workdir, all_recs, files, f.figure_masks)
        except Exception as exc:  # a figure must never fail the stage
            summary["figure_error"] = f"{type(exc).__name__}: {exc}"
    summary["figure"] = str(fig) if fig else ""
    return summary


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
