"""The headline comparison: best baseline, per-fold differences, paired bootstrap over test volumes."""

import numpy as np
import pytest

from mrgen.bench import compare as C


def _result(method: str, fold: int, dice: dict) -> dict:
    """A bench result with per-volume Dice ``{volume: (dice_a, dice_b)}``."""
    cases = [{"volume": v, "dice_a": a, "dice_b": b, "hd95_a": 1.0, "hd95_b": 1.0} for v, (a, b) in dice.items()]
    return {"method": method, "fold": fold, "metrics": {"per_case": cases}}


def _summary(means: dict) -> dict:
    return {m: {"mean_dice": v, "per_fold": {0: v, 1: v + 0.01}} for m, v in means.items()}


def test_a_constant_paired_gain_has_a_point_interval():
    a = {("0", f"v{i}"): 0.5 + 0.01 * i for i in range(8)}
    b = {k: v - 0.1 for k, v in a.items()}
    bs = C.paired_bootstrap(a, b, resamples=500, seed=3)
    assert bs["volumes"] == 8 and bs["mean_difference"] == pytest.approx(0.1)
    assert bs["ci95"] == pytest.approx([0.1, 0.1]) and bs["p_not_better"] == 0.0


def test_the_interval_covers_the_mean_difference_and_follows_the_seed():
    rng = np.random.default_rng(0)
    a = {i: float(x) for i, x in enumerate(rng.uniform(0.3, 0.8, 40))}
    b = {i: a[i] - float(rng.normal(0.02, 0.1)) for i in a}
    b[99] = 0.5  # a volume only one method has: not paired, left out
    bs = C.paired_bootstrap(a, b, resamples=2000, seed=1)
    d = np.array([a[i] - b[i] for i in range(40)])
    assert bs["volumes"] == 40 and bs["mean_difference"] == pytest.approx(d.mean())
    lo, hi = bs["ci95"]
    se = d.std(ddof=1) / np.sqrt(40)  # the normal-theory interval, an independent check of the width
    assert lo < d.mean() < hi and abs((hi - lo) - 2 * 1.96 * se) < 0.3 * (2 * 1.96 * se)
    assert C.paired_bootstrap(a, b, resamples=2000, seed=1) == bs
    assert C.paired_bootstrap(a, b, resamples=2000, seed=2)["ci95"] != bs["ci95"]


def test_headline_picks_the_best_non_oracle_non_engine_method_and_pairs_volumes():
    summary = _summary({"source_only": 0.3, "oracle": 0.9, "intensity_aug": 0.6, "mrgen_nofilter": 0.7, "mrgen": 0.5})
    results = [_result("mrgen", f, {"p1": (0.6, 0.4), "p2": (0.5, None)}) for f in (0, 1)]
    results += [_result("intensity_aug", f, {"p1": (0.7, 0.7), "p2": (0.2, 0.4)}) for f in (0, 1)]
    cmp = C.headline(summary, results, seed=0)
    assert cmp["best_baseline"] == "intensity_aug"  # not the oracle, not an engine variant
    assert cmp["per_fold_difference"] == pytest.approx({0: -0.1, 1: -0.1})
    # per volume: mrgen (0.5, 0.5) vs intensity_aug (0.7, 0.3) in both folds
    assert cmp["bootstrap"]["volumes"] == 4 and cmp["bootstrap"]["mean_difference"] == pytest.approx(0.0)
    text = "\n".join(C.markdown(cmp))
    assert "`intensity_aug`" in text and "4 test volumes" in text


def test_headline_without_per_volume_scores_says_so():
    summary = _summary({"source_only": 0.3, "mrgen": 0.5})
    results = [{"method": m, "fold": 0, "metrics": {"per_case": []}} for m in summary]
    cmp = C.headline(summary, results)
    assert "bootstrap" not in cmp and "rerun" in cmp["note"]
    assert C.headline({"oracle": summary["source_only"], "mrgen": summary["mrgen"]}, results) is None
