"""Evaluate one benchmark segmenter on the fold's real target test volumes.

``mrgen.evaluate.evaluate_segmenter`` scores every original label (3D Dice / HD95 per volume,
its ``results.json`` / figures land in ``<method>/eval/``). When the benchmark defines label
groups (BraTS: edema = {2}, tumour core = {1, 3, 4}, whole tumour = {1, 2, 3, 4}) the
predictions are merged per group (a voxel counts for a group when its label is in the group,
in the prediction and in the ground truth alike) and scored the same way; the groups are
then the reported labels. ``examples.npz`` keeps a few test slices (most foreground, the
same slices for every method of a fold) with each method's prediction for ``examples.png``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mrgen import devices, io

VERSION = 2  # of what an evaluation records (2: per-volume scores for every benchmark); part of the eval stamp


def _mean(xs) -> float | None:
    v = [x for x in xs if x is not None and isinstance(x, (int, float)) and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def group_scores(pred: np.ndarray, gt: np.ndarray, groups: dict, spacing, percentile: float = 95.0) -> dict:
    """``{group: {dice, hd95}}`` for one volume; a group absent from both sides gives NaN Dice."""
    from mrgen.evaluate.metrics import dice_per_label, hd95

    out = {}
    for name, labs in groups.items():
        p, g = np.isin(pred, labs).astype(np.uint8), np.isin(gt, labs).astype(np.uint8)
        out[name] = {"dice": dice_per_label(p, g, [1])[1], "hd95": hd95(p, g, 1, spacing, percentile)}
    return out


def pick_examples(gts: list, n: int) -> list[tuple[int, int]]:
    """``(volume, slice)`` pairs: the slices with most foreground, spread round-robin over volumes."""
    per_vol = []
    for v, gt in enumerate(gts):
        fg = (gt != 0).reshape(len(gt), -1).sum(1)
        order = [int(z) for z in np.argsort(-fg, kind="stable") if fg[z] > 0]
        # spread: every other of the top slices, so examples are not neighbours
        per_vol.append([(v, z) for z in order[::2]])
    out = []
    while len(out) < n and any(per_vol):
        for lst in per_vol:
            if lst and len(out) < n:
                out.append(lst.pop(0))
    return out


def evaluate(seg: Path, rows: list, cfg, out_dir: Path, labels: dict, groups: dict, n_examples: int = 4) -> dict:
    """``{mean_dice, mean_hd95, per_label: {name: {dice, hd95}}, volumes, per_case, labels_raw}``."""
    from mrgen.evaluate import evaluate_segmenter
    from mrgen.segment import load_segmenter, predict_rows

    root = cfg.workdir / "curated"
    pct = float(getattr(cfg.evaluate, "hd_percentile", 95.0))
    raw = evaluate_segmenter(seg, rows, root, out_dir, labels, pct, int(getattr(cfg.evaluate, "overlays", 6)),
                             device=devices.of(cfg))
    raw_labels = {n: {"dice": raw["dice"].get(n), "hd95": raw["hd95"].get(n)} for n in raw["dice"]}
    vols = list(predict_rows(load_segmenter(seg, devices.of(cfg)), [r for r in rows if r.get("has_mask", True)], root))
    per_case = []
    if groups:
        for vol in vols:
            sc = group_scores(vol["pred"], vol["gt"], groups, vol["spacing"], pct)
            per_case.append({"volume": vol["key"], **{f"{k}_{g}": v[k] for g, v in sc.items() for k in ("dice", "hd95")}})
        per_label = {g: {"dice": _mean(c[f"dice_{g}"] for c in per_case), "hd95": _mean(c[f"hd95_{g}"] for c in per_case)}
                     for g in groups}
    else:  # the labels as they are: the evaluation's own per-volume records
        from mrgen.evaluate.segmentation import read_cases

        per_label = raw_labels
        per_case = [{"volume": c["volume"], **{k: c[k] for k in c if k.startswith(("dice_", "hd95_"))}}
                    for c in read_cases(raw["results"])]
    picks = pick_examples([v["gt"] for v in vols], n_examples)
    if picks:
        # 3D models: vol arrays are (Z, X, Y) too, so a slice index works the same way
        io.write_npz(Path(out_dir) / "examples.npz",
                     image=np.stack([vols[v]["image"][z] for v, z in picks]).astype(np.float32),
                     gt=np.stack([vols[v]["gt"][z] for v, z in picks]).astype(np.uint8),
                     pred=np.stack([vols[v]["pred"][z] for v, z in picks]).astype(np.uint8),
                     ids=np.array([f"{vols[v]['key']}/z{z:04d}" for v, z in picks]))
    return {
        "mean_dice": _mean(s["dice"] for s in per_label.values()) or 0.0,
        "mean_hd95": _mean(s["hd95"] for s in per_label.values()),
        "per_label": per_label, "volumes": len(vols), "per_case": per_case,
        "labels_raw": {"mean_dice": raw.get("mean_dice"), "mean_hd95": raw.get("mean_hd95"), "per_label": raw_labels},
    }
