"""The headline comparison: ``mrgen`` against the best baseline, per test volume, with a paired bootstrap.

Folds hold few test volumes (2 BraTS subjects each), so a difference of fold means is mostly noise.
Here every test volume of every fold is one paired observation: its mean Dice over the reported labels
(labels undefined on that volume left out) under ``mrgen`` minus the same under the best baseline, the
non-oracle, non-engine method with the highest mean Dice over folds. The 95 % interval is the
percentile interval of the mean difference over ``resamples`` resamplings of the volumes with
replacement (paired: a resample draws a volume's two scores together), drawn with ``seed``.
``p_not_better`` is the fraction of resamples whose mean difference is ≤ 0.
"""

from __future__ import annotations

import numpy as np

NOT_BASELINES = ("oracle",)  # the ceiling; the engine's own variants are left out by their prefix
RESAMPLES = 10_000


def is_baseline(method: str) -> bool:
    return method not in NOT_BASELINES and not method.startswith("mrgen")


def volume_scores(results: list, method: str) -> dict:
    """``{(fold, volume): mean Dice over its labels}`` of ``method`` (``metrics.per_case`` of each fold)."""
    out = {}
    for r in results:
        if r["method"] != method:
            continue
        for case in r["metrics"].get("per_case") or []:
            vals = [v for k, v in case.items() if k.startswith("dice_") and v is not None and np.isfinite(v)]
            if vals:
                out[(r["fold"], case["volume"])] = float(np.mean(vals))
    return out


def paired_bootstrap(a: dict, b: dict, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Mean of ``a - b`` over the keys both hold, its bootstrap 95 % interval and ``p_not_better``."""
    keys = sorted(set(a) & set(b), key=str)
    if not keys:
        raise ValueError("no test volume has a score under both methods")
    d = np.array([a[k] - b[k] for k in keys], np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(int(resamples), len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"volumes": len(d), "mean_difference": float(d.mean()), "ci95": [float(lo), float(hi)],
            "p_not_better": float((means <= 0).mean()), "resamples": int(resamples), "seed": int(seed)}


def headline(summary: dict, results: list, method: str = "mrgen", seed: int = 0) -> dict | None:
    """``method`` against the best baseline of ``summary`` (:func:`mrgen.bench.report.aggregate`); None when
    either is missing. Per-fold differences of the fold means, and the paired bootstrap over test volumes."""
    base = [m for m in summary if is_baseline(m)]
    if method not in summary or not base:
        return None
    best = max(base, key=lambda m: summary[m]["mean_dice"])
    out = {"method": method, "best_baseline": best,
           "mean_dice": {method: summary[method]["mean_dice"], best: summary[best]["mean_dice"]},
           "per_fold_difference": {f: summary[method]["per_fold"][f] - summary[best]["per_fold"][f]
                                   for f in summary[method]["per_fold"] if f in summary[best]["per_fold"]}}
    a, b = volume_scores(results, method), volume_scores(results, best)
    if not (set(a) & set(b)):
        out["note"] = "no per-volume scores (results evaluated before mrgen recorded them): rerun the benchmark"
        return out
    out["bootstrap"] = paired_bootstrap(a, b, seed=seed)
    return out


def markdown(cmp: dict | None) -> list[str]:
    """The report's lines for :func:`headline`'s record."""
    if not cmp:
        return []
    m, best = cmp["method"], cmp["best_baseline"]
    lines = ["## mrgen against the best baseline", "",
             f"Best baseline: `{best}` (mean Dice {cmp['mean_dice'][best]:.3f}; `{m}` {cmp['mean_dice'][m]:.3f}). "
             "Per fold, mean Dice difference: " + ", ".join(f"fold {f} {d:+.3f}" for f, d in cmp["per_fold_difference"].items()) + "."]
    bs = cmp.get("bootstrap")
    if bs:
        lo, hi = bs["ci95"]
        lines.append(f"Paired over {bs['volumes']} test volumes: `{m}` − `{best}` = {bs['mean_difference']:+.3f} mean Dice, "
                     f"95 % bootstrap interval [{lo:+.3f}, {hi:+.3f}] ({bs['resamples']} resamples, seed {bs['seed']}); "
                     f"{100 * bs['p_not_better']:.1f} % of resamples ≤ 0.")
    else:
        lines.append(cmp.get("note", ""))
    return lines + [""]
