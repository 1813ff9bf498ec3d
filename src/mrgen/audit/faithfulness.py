"""Mask faithfulness: do the kept renders follow their masks?

* The filter's own scores (``filter/scores.jsonl``): mean IoU and confidence of the kept candidates
  against the rejected ones.
* The target segmenter (``segment/<audit.segmenter>``, the final segmenter trained on the kept set)
  segments each kept render; its Dice against the conditioning mask, per label and averaged over
  the labels the mask holds. A render below ``audit.min_dice`` is flagged: the segmenter cannot
  segment it back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mrgen.evaluate.metrics import dice_per_label


def _quantiles(x: list) -> dict:
    x = np.asarray(x, np.float64)
    if not x.size:
        return {"n": 0}
    q = np.quantile(x, [0.1, 0.5, 0.9])
    return {"n": int(x.size), "mean": float(x.mean()), "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


def filter_scores(workdir: Path) -> dict:
    """Score distributions of kept vs rejected candidates, and the raw values for the figure."""
    from mrgen.pairs import read_kept

    path = Path(workdir) / "filter" / "scores.jsonl"
    if not path.exists():
        return {"skipped": f"no {path}"}
    kept = {(k["key"], int(k["candidate"])) for k in read_kept(workdir)["kept"]}
    groups: dict = {"kept": {"mean_iou": [], "mean_conf": []}, "rejected": {"mean_iou": [], "mean_conf": []}}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            g = groups["kept" if (r["key"], int(r["candidate"])) in kept else "rejected"]
            g["mean_iou"].append(float(r.get("mean_iou", 0.0)))
            g["mean_conf"].append(float(r.get("mean_conf", 0.0)))
    return {g: {k: _quantiles(v) for k, v in d.items()} for g, d in groups.items()} | {"values": groups}


def segment_back(model, images: list, masks: list, labels: dict, min_dice: float) -> dict:
    """Dice of ``model``'s prediction on each image against its conditioning mask; flags below ``min_dice``."""
    from mrgen.segment import predict

    per_image, per_label = [], {name: [] for name in labels.values()}
    for im, m in zip(images, masks):
        present = [int(v) for v in labels if (np.asarray(m) == int(v)).any()]
        if not present:
            continue
        d = dice_per_label(predict(model, im), m, present)
        per_image.append(float(np.mean(list(d.values()))))
        for v in present:
            per_label[labels[v]].append(d[v])
    x = np.asarray(per_image)
    flagged = [i for i, v in enumerate(per_image) if v < min_dice]
    return {"images": len(per_image), "mean_dice": _quantiles(per_image), "min_dice": min_dice,
            "flagged": len(flagged), "flagged_index": flagged, "flagged_fraction": float(len(flagged) / len(x)) if x.size else 0.0,
            "per_label": {k: float(np.mean(v)) for k, v in per_label.items() if v}, "values": per_image}
