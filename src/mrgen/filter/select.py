"""Keep the best candidates per mask, as MRGen's released ``filter_json`` does.

Per mask: sort candidates by mean IoU (then mean confidence), look at the best ``top``
(MRGen: 5; 0 = all); a candidate *passes* when every organ has IoU ≥ ``organ_iou`` and
confidence ≥ ``organ_conf`` and the means reach ``mean_iou`` / ``mean_conf``. With at least
``keep`` passing, keep the first ``keep``; otherwise lower all four thresholds by ``relax`` and
keep the first ``relax_keep`` that pass; with none, the mask is dropped. Calibrated thresholds
(:mod:`mrgen.filter.calibrate`) set ``organ_iou``/``organ_conf`` per label.

``filter.selection=rank`` keeps instead the first ``keep`` of the pool that clear a *floor* (the chance
level: what real images with a displaced mask score, :func:`mrgen.filter.calibrate.floor`), so every mask
whose renders follow it at all contributes ``keep`` candidates and the scorer only orders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Thresholds:
    """The four pass thresholds; ``labels`` (``{label str: (iou, conf)}``, calibrated runs) overrides
    ``organ_iou``/``organ_conf`` for the labels it names."""

    organ_iou: float
    organ_conf: float
    mean_iou: float
    mean_conf: float
    labels: dict = field(default_factory=dict)
    # calibrated runs: the second chance's thresholds, computed at calibration (lower than these by at least
    # ``filter.relax``, and no higher than what real pairs with a displaced mask reach); None = these - relax
    second: "Thresholds | None" = None

    def organ(self, label) -> tuple[float, float]:
        """(iou, conf) thresholds of ``label``: its own when calibrated, else the organ-wide ones."""
        return tuple(self.labels.get(str(label), (self.organ_iou, self.organ_conf)))

    def relaxed(self, by: float) -> "Thresholds":
        if self.second is not None:
            return self.second
        return Thresholds(self.organ_iou - by, self.organ_conf - by, self.mean_iou - by, self.mean_conf - by,
                          {k: (i - by, c - by) for k, (i, c) in self.labels.items()})

    def as_dict(self) -> dict:
        """JSON form (``kept.json``); ``labels`` only when there are per-label thresholds."""
        d = {"organ_iou": self.organ_iou, "organ_conf": self.organ_conf, "mean_iou": self.mean_iou,
             "mean_conf": self.mean_conf}
        if self.labels:
            d["labels"] = {k: {"iou": i, "conf": c} for k, (i, c) in sorted(self.labels.items())}
        if self.second is not None:
            d["second_chance"] = self.second.as_dict()
        return d

    def describe(self) -> str:
        """One line for messages: ``organ iou/conf 0.60/0.70 (label 1: 0.71/0.85), mean 0.70/0.80``."""
        per = ", ".join(f"label {k}: {i:.2f}/{c:.2f}" for k, (i, c) in sorted(self.labels.items()))
        organ = f"per label iou/conf {per}" if per else f"organ iou/conf {self.organ_iou:.2f}/{self.organ_conf:.2f}"
        return f"{organ}, mean iou/conf {self.mean_iou:.2f}/{self.mean_conf:.2f}"

    @classmethod
    def from_cfg(cls, fcfg) -> "Thresholds":
        return cls(fcfg.organ_iou, fcfg.organ_conf, fcfg.mean_iou, fcfg.mean_conf)


def failures(rec: dict, t: Thresholds) -> list[str]:
    """Why ``rec`` (``labels: {label: {iou, conf}}``, ``mean_iou``, ``mean_conf``) fails ``t``; [] = passes."""
    why = []
    if not rec.get("labels"):
        return ["no organ could be scored"]
    for lab, s in rec["labels"].items():
        t_iou, t_conf = t.organ(lab)
        if s["iou"] < t_iou:
            why.append(f"label {lab} iou {s['iou']:.2f}<{t_iou:.2f}")
        if s["conf"] < t_conf:
            why.append(f"label {lab} conf {s['conf']:.2f}<{t_conf:.2f}")
    if rec["mean_iou"] < t.mean_iou:
        why.append(f"mean iou {rec['mean_iou']:.2f}<{t.mean_iou:.2f}")
    if rec["mean_conf"] < t.mean_conf:
        why.append(f"mean conf {rec['mean_conf']:.2f}<{t.mean_conf:.2f}")
    return why


def select_mask(records: list[dict], t: Thresholds, keep: int = 2, relax: float = 0.1, relax_keep: int = 1,
                top: int = 5, floor: Thresholds | None = None) -> tuple[list[dict], str]:
    """Select among one mask's candidate records. Sets ``kept`` and ``reason`` on every record.

    ``floor`` given (``filter.selection=rank``): keep the best ``keep`` of the pool that pass ``floor``;
    ``t``, ``relax`` and ``relax_keep`` are then unused. Returns (kept records in rank order, outcome) with
    outcome ``kept``, ``relaxed`` or ``dropped``.
    """
    ranked = sorted(records, key=lambda r: (-r["mean_iou"], -r["mean_conf"], r["candidate"]))
    pool = ranked[:top] if top > 0 else ranked
    for r in ranked:
        r["kept"] = False
        r["reason"] = f"outside the best {top} by mean iou" if r not in pool else ""
    if floor is not None:
        why = [failures(r, floor) for r in pool]
        chosen = [r for r, w in zip(pool, why) if not w][:keep]
        for r, w in zip(pool, why):
            r["kept"] = r in chosen
            if r["kept"]:
                r["reason"] = "kept"
            elif w:
                r["reason"] = "below the floor: " + "; ".join(w)
            else:
                r["reason"] = "above the floor, but better candidates filled the quota"
        return chosen, "kept" if chosen else "dropped"
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
