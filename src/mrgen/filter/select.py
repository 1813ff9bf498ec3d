"""Keep the best candidates per mask, as MRGen's released ``filter_json`` does.

Per mask: sort candidates by mean IoU (then mean confidence), look at the best ``top``
(MRGen: 5; 0 = all); a candidate *passes* when every organ has IoU ≥ ``organ_iou`` and
confidence ≥ ``organ_conf`` and the means reach ``mean_iou`` / ``mean_conf``. With at least
``keep`` passing, keep the first ``keep``; otherwise lower all four thresholds by ``relax`` and
keep the first ``relax_keep`` that pass; with none, the mask is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    organ_iou: float
    organ_conf: float
    mean_iou: float
    mean_conf: float

    def relaxed(self, by: float) -> "Thresholds":
        return Thresholds(self.organ_iou - by, self.organ_conf - by, self.mean_iou - by, self.mean_conf - by)

    @classmethod
    def from_cfg(cls, fcfg) -> "Thresholds":
        return cls(fcfg.organ_iou, fcfg.organ_conf, fcfg.mean_iou, fcfg.mean_conf)


def failures(rec: dict, t: Thresholds) -> list[str]:
    """Why ``rec`` (``labels: {label: {iou, conf}}``, ``mean_iou``, ``mean_conf``) fails ``t``; [] = passes."""
    why = []
    if not rec.get("labels"):
        return ["no organ could be scored"]
    for lab, s in rec["labels"].items():
        if s["iou"] < t.organ_iou:
            why.append(f"label {lab} iou {s['iou']:.2f}<{t.organ_iou:.2f}")
        if s["conf"] < t.organ_conf:
            why.append(f"label {lab} conf {s['conf']:.2f}<{t.organ_conf:.2f}")
    if rec["mean_iou"] < t.mean_iou:
        why.append(f"mean iou {rec['mean_iou']:.2f}<{t.mean_iou:.2f}")
    if rec["mean_conf"] < t.mean_conf:
        why.append(f"mean conf {rec['mean_conf']:.2f}<{t.mean_conf:.2f}")
    return why


def select_mask(records: list[dict], t: Thresholds, keep: int = 2, relax: float = 0.1, relax_keep: int = 1,
                top: int = 5) -> tuple[list[dict], str]:
    """Select among one mask's candidate records. Sets ``kept`` and ``reason`` on every record.

    Returns (kept records in rank order, outcome) with outcome ``kept``, ``relaxed`` or ``dropped``.
    """
    ranked = sorted(records, key=lambda r: (-r["mean_iou"], -r["mean_conf"], r["candidate"]))
    pool = ranked[:top] if top > 0 else ranked
    for r in ranked:
        r["kept"] = False
        r["reason"] = f"outside the best {top} by mean iou" if r not in pool else ""
    strict = [r for r in pool if not failures(r, t)]
    if len(strict) >= keep:
        chosen, outcome, used = strict[:keep], "kept", t
    else:
        used = t.relaxed(relax)
        chosen = [r for r in pool if not failures(r, used)][:relax_keep]
        outcome = "relaxed" if chosen else "dropped"
    for r in pool:
        if r in chosen:
            r["kept"], r["reason"] = True, "kept" if outcome == "kept" else f"kept at thresholds relaxed by {relax}"
        else:
            why = failures(r, used)
            r["reason"] = "; ".join(why) if why else "passed, but better candidates filled the quota"
    return chosen, outcome
