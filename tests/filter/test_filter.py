"""Filter: classical scorer separates aligned from shifted masks; MRGen's selection logic; the stage."""

import json
import time

import numpy as np
import pytest

from mrgen import config as C
from mrgen.filter import ClassicalScorer, Thresholds, build_scorer, score_any, select_mask
from mrgen.filter.classical import METHODS


def disk_pair(size=64, r=12, shift=0, seed=0, labels=1):
    yy, xx = np.mgrid[:size, :size]
    m = np.zeros((size, size), np.int64)
    c = size // 2
    m[(yy - c) ** 2 + (xx - 3 * size // 8) ** 2 < r ** 2] = 1
    if labels > 1:
        m[(np.abs(yy - c) < 7) & (np.abs(xx - 3 * size // 4) < 7)] = 2
    rng = np.random.default_rng(seed)
    img = np.where(m == 1, 0.5, np.where(m == 2, 0.0, -0.6)) + 0.05 * rng.standard_normal((size, size))
    return img.astype(np.float32), np.roll(m, shift, axis=1)


@pytest.mark.parametrize("method", METHODS)
def test_scorer_ranks_aligned_above_shifted(method):
    img, m = disk_pair()
    _, shifted = disk_pair(shift=6)
    s = ClassicalScorer(method)
    good, bad = s.score(img, m)[1], s.score(img, shifted)[1]
    assert good[0] > bad[0] + 0.15, (good, bad)
    # conf = agreement of the perturbed prompts' segmentations: full on a clean aligned disk (measured >= 0.99)
    assert good[1] >= 0.95 and good[1] >= bad[1], (good, bad)


def test_default_scorer_multi_label_fast_and_deterministic():
    img, m = disk_pair(labels=2)
    s = ClassicalScorer()  # default method
    s.score(img, m)  # warm-up (imports)
    t0 = time.perf_counter()
    a = s.score(img, m)
    dt = time.perf_counter() - t0
    assert set(a) == {1, 2} and all(v[0] > 0.8 for v in a.values())
    assert dt < 0.5, f"scoring a 64x64 candidate took {dt:.2f}s"
    assert s.score(img, m) == a


def test_score_any_3d_uses_axial_slices():
    img, m = disk_pair()
    vol_i, vol_m = np.stack([img] * 3), np.stack([m, m, np.zeros_like(m)])
    res = score_any(ClassicalScorer(), vol_i, vol_m)
    assert set(res) == {1} and res[1][0] > 0.8


def rec(c, ious, confs):
    return {"candidate": c, "labels": {str(i + 1): {"iou": a, "conf": b} for i, (a, b) in enumerate(zip(ious, confs))},
            "mean_iou": float(np.mean(ious)), "mean_conf": float(np.mean(confs))}


T = Thresholds(organ_iou=0.7, organ_conf=0.8, mean_iou=0.8, mean_conf=0.9)


def test_selection_keeps_best_two_passing():
    recs = [rec(0, [0.95, 0.9], [0.95, 0.95]), rec(1, [0.85, 0.85], [0.95, 0.92]), rec(2, [0.99, 0.65], [0.99, 0.99]),
            rec(3, [0.9, 0.9], [0.95, 0.7]), rec(4, [0.5, 0.5], [0.5, 0.5])]
    kept, outcome = select_mask(recs, T, keep=2, relax=0.1, relax_keep=1)
    assert outcome == "kept" and [r["candidate"] for r in kept] == [0, 1]
    by = {r["candidate"]: r for r in recs}
    assert by[2]["reason"] == "label 2 iou 0.65<0.70" and not by[2]["kept"]
    assert "label 2 conf 0.70<0.80" in by[3]["reason"]
    assert by[0]["kept"] and by[1]["kept"] and not by[4]["kept"]


def test_selection_relax_path_keeps_one():
    # only candidate 1 passes strictly; relaxed by 0.1, candidate 0 (higher mean iou) passes too and is kept alone
    recs = [rec(0, [0.97, 0.67], [0.85, 0.85]), rec(1, [0.82, 0.8], [0.95, 0.95]), rec(2, [0.5, 0.5], [0.99, 0.99])]
    kept, outcome = select_mask(recs, T, keep=2, relax=0.1, relax_keep=1)
    assert outcome == "relaxed" and [r["candidate"] for r in kept] == [0]
    assert "relaxed" in recs[0]["reason"] and recs[1]["reason"] == "passed, but better candidates filled the quota"


def test_selection_drops_mask_when_nothing_passes_and_top_limits_pool():
    recs = [rec(0, [0.5], [0.5]), rec(1, [0.6], [0.95])]
    kept, outcome = select_mask(recs, T, keep=2, relax=0.1, relax_keep=1)
    assert outcome == "dropped" and kept == [] and not any(r["kept"] for r in recs)
    # six candidates pass, but only the best `top` by mean iou are considered
    recs = [rec(i, [0.9 - 0.01 * i], [0.95]) for i in range(6)]
    kept, _ = select_mask(recs, T, keep=2, top=5)
    assert [r["candidate"] for r in kept] == [0, 1]
    assert recs[5]["reason"] == "outside the best 5 by mean iou"


def test_rank_selection_keeps_the_best_above_the_floor_whatever_the_thresholds():
    floor = Thresholds(0.0, 0.0, 0.4, 0.0)  # mean IoU >= 0.4 only
    # nothing passes MRGen's thresholds T, which would drop the mask; rank keeps the best two above the floor
    recs = [rec(0, [0.45, 0.35], [0.3, 0.3]), rec(1, [0.6, 0.5], [0.5, 0.5]), rec(2, [0.3, 0.3], [0.99, 0.99]),
            rec(3, [0.5, 0.4], [0.1, 0.1])]
    assert select_mask([dict(r) for r in recs], T, keep=2)[1] == "dropped"
    kept, outcome = select_mask(recs, T, keep=2, floor=floor)
    assert outcome == "kept" and [r["candidate"] for r in kept] == [1, 3]  # mean iou 0.55, 0.45 (0.40 = cand 0 third)
    by = {r["candidate"]: r for r in recs}
    assert by[0]["reason"] == "above the floor, but better candidates filled the quota"
    assert by[2]["reason"] == "below the floor: mean iou 0.30<0.40" and not by[2]["kept"]
    # only one candidate above the floor: it alone is kept; none: the mask is dropped
    kept, outcome = select_mask([rec(0, [0.5], [0.1]), rec(1, [0.2], [0.9])], T, keep=2, floor=floor)
    assert outcome == "kept" and [r["candidate"] for r in kept] == [0]
    assert select_mask([rec(0, [0.39], [0.9])], T, keep=2, floor=floor) == ([], "dropped")


def test_rank_floor_is_the_calibrated_chance_level_or_the_relaxed_absolute_mean():
    from mrgen.filter.stage import rank_floor

    f = C.FilterCfg(selection="rank", mean_iou=0.7, relax=0.1)
    assert rank_floor(f, {"floor": {"quantile": 0.5, "mean_iou": 0.31}}).mean_iou == 0.31
    assert rank_floor(f, None).mean_iou == pytest.approx(0.6)  # absolute thresholds: mean_iou - relax
    assert rank_floor(C.FilterCfg(), {"floor": {"mean_iou": 0.31}}) is None  # selection=thresholds: no floor


def _fake_synth(wd, n_masks=3, n_cand=4):
    out = wd / "synth" / "candidates"
    out.mkdir(parents=True)
    for k in range(n_masks):
        imgs = []
        for c in range(n_cand):
            img, m = disk_pair(seed=10 * k + c, labels=2)
            if c % 2:  # odd candidates are rendered off the mask
                img = np.roll(img, 7, axis=1)
            imgs.append(img)
        key = f"ds__s{k}__T1__z0001"
        meta = [{"key": key, "mask_id": f"ds/s{k}/T1/z0001", "candidate": c, "seed": 100 + c, "prompt": "p",
                 "file": f"candidates/{key}.npz"} for c in range(n_cand)]
        np.savez(out / f"{key}.npz", images=np.stack(imgs).astype(np.float16), mask=m.astype(np.uint8),
                 seeds=np.arange(n_cand, dtype=np.int64) + 100, meta=np.array(json.dumps(meta)))
    return out


def test_filter_stage_writes_scores_kept_figure_and_resumes(tmp_path):
    from mrgen import filter as F

    _fake_synth(tmp_path)
    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}", "filter.thresholds=absolute", "filter.keep=2",
                                           "filter.relax=0.1", "filter.organ_iou=0.6",
                                           "filter.organ_conf=0.6", "filter.mean_iou=0.7", "filter.mean_conf=0.7"])
    res = F.run(cfg)
    assert res["masks"] == 3 and res["candidates"] == 12 and res["resumed_masks"] == 0
    lines = [json.loads(x) for x in (tmp_path / "filter" / "scores.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and {"key", "candidate", "labels", "mean_iou", "mean_conf", "kept", "reason"} <= set(lines[0])
    kept = json.loads((tmp_path / "filter" / "kept.json").read_text())
    assert sorted(k["candidate"] for k in kept["kept"]) == [0, 0, 0, 2, 2, 2]  # the aligned renders
    assert all(k["mask_id"].startswith("ds/") for k in kept["kept"])
    assert (tmp_path / "filter" / "kept_vs_rejected.png").stat().st_size > 1000
    first = (tmp_path / "filter" / "kept.json").read_bytes()
    again = F.run(cfg)
    assert again["resumed_masks"] == 3 and again["kept"] == 6
    assert (tmp_path / "filter" / "kept.json").read_bytes() == first  # resumed or not, the same file


def test_sam2_without_checkpoint_says_how_to_install():
    cfg = C.load_config("tiny", overrides=["filter.scorer=sam2", "filter.sam2_checkpoint=/nonexistent/sam2.pt"])
    with pytest.raises(FileNotFoundError, match="pip install"):
        build_scorer(cfg)


def test_segmenter_scorer(tmp_path):
    from mrgen.filter.scorers import SegmenterScorer
    from mrgen.segment import train_segmenter

    img, m = disk_pair(size=16, r=4)
    _, shifted = disk_pair(size=16, r=4, shift=4)
    cfg = C.load_config("tiny", overrides=["segment.channels=[8,8,8]", "segment.strides=[2,2]", "segment.train.steps=30",
                                           "segment.train.lr=0.005", "segment.augment=false", "segment.train.ckpt_every=0"])
    train_segmenter([img], [m], 2, cfg, tmp_path / "seg")  # 30 steps on the one image: it fits the disk
    scorer = SegmenterScorer(tmp_path / "seg")
    good, bad = scorer.score(img, m), scorer.score(img, shifted)
    assert set(good) == set(bad) == {1}
    assert good[1][0] >= 0.7 and good[1][0] > bad[1][0] + 0.2, (good, bad)  # iou with each mask (measured 0.98, 0.23)
    assert good[1][1] > bad[1][1], (good, bad)  # mean label probability inside the mask (0.99, 0.47)


def test_benchmark_auc_on_shared_data_or_skip(bench_script):
    """A small slice of benchmarks/filter_auc.py on real CHAOS T2 slices (skipped when the data is absent)."""
    import os
    from pathlib import Path

    root = Path(os.environ.get("MRGEN_SHARED_DATA", "/work/shared/data")) / "chaos_t2"
    if not root.is_dir():
        pytest.skip("shared data (chaos_t2) not available")
    fa = bench_script("filter_auc")
    assert fa.auc([2, 3], [1, 1]) == 1.0 and fa.auc([1], [1]) == 0.5
    items = fa.load_chaos(root, 64, per_subject=1, max_subjects=3)
    pairs = [p for p in fa.make_pairs(items) if p[1] in ("aligned", "shift")]
    res = fa.evaluate(pairs, ClassicalScorer())
    assert res["auc_iou_shift"] >= 0.75


def test_benchmark_misalignments_work_on_3d_volumes(bench_script):
    """The threshold benchmark's shift moves a (Z, H, W) volume in-plane only; the warp stays within its amplitude."""
    fa = bench_script("filter_auc")
    m = np.zeros((6, 24, 24), np.int64)
    m[1:5, 8:16, 8:16] = 2
    rng = np.random.default_rng(0)
    s = fa.shifted(m, rng, lo=4, hi=4)
    assert (s.sum((1, 2)) == m.sum((1, 2))).all()  # every slice keeps its voxels: no move along z
    assert not np.array_equal(s, m)
    w = fa.warped(m, rng, amp=2.0)
    assert set(np.unique(w)) <= {0, 2} and not np.array_equal(w, m)
    ys, xs = np.nonzero((w == 2).any(0))
    assert ys.min() >= 5 and ys.max() <= 18 and xs.min() >= 5 and xs.max() <= 18  # within 2 px (+1 rounding) of the box


def test_adherence_averages_every_candidate_and_the_kept_ones():
    from mrgen.filter.stage import adherence

    rec = lambda c, **iou: {"candidate": c, "labels": {k: {"iou": v, "conf": 1.0} for k, v in iou.items()}}  # noqa: E731
    recs = {"a": [rec(0, liver=0.2, brain=0.9), rec(1, liver=0.6, brain=0.7)], "b": [rec(0, brain=0.5)]}
    out = adherence(recs, [{"key": "a", "candidate": 1}])
    assert out == {"brain": {"all": 0.7, "kept": 0.7, "n": 3}, "liver": {"all": 0.4, "kept": 0.6, "n": 2}}
    assert adherence(recs, [])["liver"]["kept"] is None
