"""Calibrated thresholds (quantiles of real pairs' scores), the kept-fraction floor, and a ring-shaped organ."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mrgen import config as C
from mrgen import filter as F
from mrgen.filter import ClassicalScorer, Thresholds, failures
from mrgen.filter.calibrate import calibrate, pick_rows

T1 = (-0.6, 0.5, 0.1)  # the tiny index's T1 background, liver, spleen (tests/conftest.py)

# hand-made scores of five real pairs (call order); label 2 is absent from the last one
KNOWN = [
    ({"1": (0.9, 0.95), "2": (0.8, 0.9)}, 0.85, 0.925),
    ({"1": (0.5, 0.85), "2": (0.6, 0.9)}, 0.55, 0.875),
    ({"1": (0.7, 0.75), "2": (0.4, 0.5)}, 0.55, 0.625),
    ({"1": (0.3, 0.65), "2": (0.2, 0.7)}, 0.25, 0.675),
    ({"1": (0.1, 0.55)}, 0.1, 0.55),
]
# by hand, numpy's linear quantile at 0.25 = sorted[0.25 * (n - 1)], interpolated:
#   label 1 iou  [.1 .3 .5 .7 .9] -> pos 1 -> 0.3;       conf [.55 .65 .75 .85 .95] -> 0.65
#   label 2 iou  [.2 .4 .6 .8]    -> pos .75 -> 0.35;    conf [.5 .7 .9 .9]        -> 0.65
#   pooled iou   [.1 .. .9] (9)   -> pos 2 -> 0.3;       conf [.5 .55 .65 .7 .75 .85 .9 .9 .95] -> 0.65
#   mean iou     [.1 .25 .55 .55 .85] -> 0.25;           mean conf [.55 .625 .675 .875 .925] -> 0.625
HAND_Q25 = Thresholds(0.3, 0.65, 0.25, 0.625, {"1": (0.3, 0.65), "2": (0.35, 0.65)})


# the same five pairs with their mask displaced (the second chance's reference), in call order
KNOWN_MOVED = [
    ({"1": (0.1, 0.9), "2": (0.1, 0.4)}, 0.1, 0.65),
    ({"1": (0.2, 0.8), "2": (0.3, 0.6)}, 0.25, 0.7),
    ({"1": (0.1, 0.7), "2": (0.0, 0.5)}, 0.05, 0.6),
    ({"1": (0.0, 0.6), "2": (0.2, 0.3)}, 0.1, 0.45),
    ({"1": (0.05, 0.5)}, 0.05, 0.5),
]
# by hand at 0.9 (pos 0.9 * (n - 1)): label 1 iou [0 .05 .1 .1 .2] -> .16, conf [.5 .6 .7 .8 .9] -> .86;
#   label 2 iou [0 .1 .2 .3] -> .27, conf [.3 .4 .5 .6] -> .57; pooled iou (9) -> .22, conf -> .82;
#   means iou [.05 .05 .1 .1 .25] -> .19, conf [.45 .5 .6 .65 .7] -> .68.
# second chance = min(HAND_Q25 - 0.1, those): label 1 (.16, .55), label 2 (.25, .55), organ (.2, .55), means (.15, .525)
HAND_SECOND = Thresholds(0.2, 0.55, 0.15, 0.525, {"1": (0.16, 0.55), "2": (0.25, 0.55)})


def _known_scorer(calls: list):
    def score(img, mask, key):
        moved = key.endswith("~displaced")
        table = KNOWN_MOVED if moved else KNOWN
        labels, mi, mc = table[sum(1 for k in calls if k.endswith("~displaced") == moved)]
        calls.append(key)
        return {"labels": {k: {"iou": i, "conf": c} for k, (i, c) in labels.items()}, "mean_iou": mi, "mean_conf": mc}
    return score


def test_calibrated_thresholds_are_the_hand_computed_quantiles_and_cached(tiny_index, tiny_config):
    cfg = tiny_config(tiny_index, "filter.calibration_items=5", "filter.calibration_quantile=0.25", "filter.relax=0.1",
                      "filter.misaligned_quantile=0.9")
    calls: list = []
    out = tiny_index / "filter"
    t, cal = calibrate(cfg, _known_scorer(calls), "fake", out, [out])
    assert len(calls) == 10 and len(set(calls)) == 10  # each real pair aligned and displaced
    second = t.relaxed(0.1)  # the second chance is the calibrated one, not t - 0.1
    for lab in ("1", "2"):
        assert second.labels[lab] == pytest.approx(HAND_SECOND.labels[lab], abs=1e-9)
    assert (second.organ_iou, second.organ_conf, second.mean_iou, second.mean_conf) == pytest.approx(
        (0.2, 0.55, 0.15, 0.525), abs=1e-9)
    assert cal["displaced_distribution"]["labels"]["1"]["iou"]["q90"] == 0.16
    assert set(t.labels) == {"1", "2"}
    for lab in ("1", "2"):
        assert t.labels[lab] == pytest.approx(HAND_Q25.labels[lab], abs=1e-9)
    assert (t.organ_iou, t.organ_conf, t.mean_iou, t.mean_conf) == pytest.approx((0.3, 0.65, 0.25, 0.625), abs=1e-9)
    dist = cal["distribution"]
    assert dist["labels"]["1"]["n"] == 5 and dist["labels"]["2"]["n"] == 4 and dist["mean"]["n"] == 5
    assert dist["labels"]["1"]["iou"]["q50"] == 0.5 and dist["labels"]["2"]["iou"]["min"] == 0.2
    saved = json.loads((out / "calibration.json").read_text())
    assert saved["thresholds"]["labels"]["2"] == {"iou": 0.35, "conf": 0.65} and len(saved["scores"]) == 10
    assert saved["thresholds"]["second_chance"]["labels"]["1"]["iou"] == pytest.approx(0.16)
    assert cal["seed"] == cfg.run.seed and cal["items"] == 5 and cal["scored_now"] == 10
    # the rank floor: the median (floor_quantile 0.5) of the displaced pairs' mean IoU [.05 .05 .1 .1 .25] = 0.1
    assert cal["floor"] == {"quantile": 0.5, "mean_iou": 0.1} and saved["floor"]["mean_iou"] == 0.1

    # a rerun at another quantile scores nothing again: the median of the cached scores
    cfg2 = tiny_config(tiny_index, "filter.calibration_items=5", "filter.calibration_quantile=0.5")
    t2, cal2 = calibrate(cfg2, lambda *a: pytest.fail("rescored a cached real pair"), "fake", out, [out])
    assert cal2["scored_now"] == 0
    assert t2.labels["1"] == pytest.approx((0.5, 0.75)) and t2.labels["2"] == pytest.approx((0.5, 0.8))


def test_displaced_mask_moves_an_eighth_of_the_image_in_a_seeded_direction():
    from mrgen.filter.calibrate import displaced

    m = np.zeros((32, 32), np.int64)
    m[12:20, 12:20] = 1
    m[14:16, 14:16] = 2
    shifts = set()
    for seed in range(16):
        d = displaced(m, seed)
        assert d.dtype == m.dtype and sorted(np.unique(d)) == [0, 1, 2] and (d == 2).sum() == 4
        ys, xs = np.nonzero(d == 1)
        shifts.add((int(ys.min()) - 12, int(xs.min()) - 12))
        assert np.array_equal(d, displaced(m, seed))
    assert all(a * a + b * b in (16, 18) for a, b in shifts) and len(shifts) >= 6  # 4 px = 32 / 8 (diagonals 3, 3)
    v = displaced(np.stack([m, m]), 3)  # a volume moves in-plane only
    assert np.array_equal(v[0], v[1]) and np.array_equal(v[0], displaced(m, 3))


def test_calibration_subset_is_seeded_and_only_labelled_rows():
    rows = [{"id": f"r{i:02d}", "labels": [1] if i % 3 else []} for i in range(30)]
    a, b = pick_rows(rows, 5, seed=1), pick_rows(list(reversed(rows)), 5, seed=1)
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 5  # the index's order does not matter
    assert all(r["labels"] for r in a)
    assert [r["id"] for r in pick_rows(rows, 5, seed=2)] != [r["id"] for r in a]
    assert len(pick_rows(rows, 100, seed=1)) == 20  # fewer labelled rows than asked: all of them


def test_per_label_thresholds_override_the_organ_ones_and_relax():
    t = Thresholds(0.5, 0.5, 0.0, 0.0, {"1": (0.8, 0.9)})
    rec = {"labels": {"1": {"iou": 0.75, "conf": 0.95}, "2": {"iou": 0.55, "conf": 0.6}}, "mean_iou": 0.65, "mean_conf": 0.8}
    assert failures(rec, t) == ["label 1 iou 0.75<0.80"]  # label 2 falls back to organ_iou 0.5 and passes
    assert failures(rec, t.relaxed(0.1)) == []
    assert t.as_dict()["labels"] == {"1": {"iou": 0.8, "conf": 0.9}}
    assert "labels" not in Thresholds(0.7, 0.8, 0.8, 0.9).as_dict()  # absolute thresholds: kept.json as before


def _plant_candidates(wd, n_masks=3, roll=(False, True)):
    """Candidate files for ``n_masks`` of the tiny index's T1 masks: candidate c is a fresh noisy T1 rendering of the
    mask, rolled by half the image when ``roll[c]`` (a render that ignored its mask)."""
    from mrgen.curate.dataset import load_row
    from mrgen.curate.index import Index

    rows = [r for r in Index(wd / "curated" / "index.parquet").query(kind="slice", modality="T1") if r["labels"]][:n_masks]
    out = wd / "synth" / "candidates"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for k, r in enumerate(rows):
        _, m = load_row(wd / "curated", r, (16, 16), image=False)
        clean = np.choose(m, T1) + rng.normal(0, 0.05, m.shape)
        imgs = [np.roll(clean, 8, axis=1) if shift else clean for shift in roll]
        key = f"toy__m{k}"
        meta = [{"key": key, "mask_id": r["id"], "candidate": c, "seed": c} for c in range(len(imgs))]
        np.savez(out / f"{key}.npz", images=np.stack(imgs).astype(np.float16), mask=m.astype(np.uint8),
                 seeds=np.arange(len(imgs), dtype=np.int64), meta=np.array(json.dumps(meta)))
    return len(rows)


SELECT = ("filter.thresholds=calibrated", "filter.keep=1", "filter.relax=0.1", "filter.calibration_items=8",
          "filter.figure_masks=0")


def test_calibrated_filter_keeps_the_aligned_candidate_of_every_mask(tiny_index, tiny_config):
    n = _plant_candidates(tiny_index)
    cfg = tiny_config(tiny_index, *SELECT, "filter.min_kept_fraction=1.0")
    res = F.run(cfg)
    assert res["masks"] == n == 3 and res["kept_fraction"] == 1.0
    kept = json.loads((tiny_index / "filter" / "kept.json").read_text())
    assert sorted(k["candidate"] for k in kept["kept"]) == [0] * n  # the aligned renders, never the rolled ones
    assert kept["threshold_mode"] == "calibrated" and kept["calibration"]["items"] == 8
    cal = json.loads((tiny_index / "filter" / "calibration.json").read_text())
    assert kept["thresholds"] == cal["thresholds"] and set(cal["thresholds"]["labels"]) == {"1", "2"}
    # calibrated on clean real T1 pairs, the liver threshold is far above the tiny preset's absolute 0
    assert cal["thresholds"]["labels"]["1"]["iou"] > 0.6
    scores = [json.loads(x) for x in (tiny_index / "filter" / "scores.jsonl").read_text().splitlines()]
    assert all("<" in r["reason"] for r in scores if r["candidate"] == 1)  # rejected for a threshold


def test_floor_stops_with_counts_thresholds_and_fixes_and_a_rerun_does_not_rescore(tiny_index, tiny_config, monkeypatch):
    from typer.testing import CliRunner

    from mrgen.cli import app

    n = _plant_candidates(tiny_index, roll=(True, True))  # every candidate misaligned
    cfg = tiny_config(tiny_index, *SELECT, "filter.min_kept_fraction=0.5")
    (tiny_index / "filter").mkdir()
    (tiny_index / "filter" / "kept.json").write_text('{"kept": []}')  # a selection of earlier settings
    with pytest.raises(F.FilterStarved) as err:
        F.run(cfg)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert f"for 0 of {n} masks" in msg and "filter.min_kept_fraction=0.5" in msg
    assert "label 1:" in msg and "calibration_quantile" in msg and "filter.min_kept_fraction=0" in msg
    assert "sample.candidates" in msg
    wd = tiny_index / "filter"
    assert not (wd / "kept.json").exists()  # nothing downstream can train on a stale or starved selection
    assert len((wd / "scores.jsonl").read_text().splitlines()) == 2 * n and (wd / "starved.json").exists()

    # the CLI prints one line and exits 2
    res = CliRunner().invoke(app, ["filter", "--preset", "tiny", "-w", str(tiny_index), *SELECT, "filter.min_kept_fraction=0.5"])
    assert res.exit_code == 2 and "FilterStarved" in res.output and f"0 of {n} masks" in res.output

    # accepting the few: nothing is scored again (candidates nor real pairs)
    monkeypatch.setattr("mrgen.filter.stage.build_scorer", lambda c: pytest.fail("rescored"))
    again = F.run(tiny_config(tiny_index, *SELECT, "filter.min_kept_fraction=0"))
    assert again["resumed_masks"] == n and again["calibration_scored_now"] == 0 and again["kept_fraction"] == 0.0
    assert (wd / "kept.json").exists() and not (wd / "starved.json").exists()


def test_parts_moved_aside_by_the_pipeline_are_reused_only_for_the_same_file(tiny_index, tiny_config, monkeypatch):
    _plant_candidates(tiny_index, n_masks=2)
    cfg = tiny_config(tiny_index, *SELECT, "filter.thresholds=absolute")
    F.run(cfg)
    (tiny_index / "filter").rename(tiny_index / "filter.stale-abc")  # what mrgen run does when the identity changes
    f = tiny_index / "synth" / "candidates" / "toy__m1.npz"
    with np.load(f) as z:
        data = dict(z)
    data["images"] = data["images"][::-1].copy()  # m1's file changed since it was scored
    np.savez(f, **data)
    res = F.run(cfg)
    assert res["resumed_masks"] == 1  # m0 from the stale folder; m1 rescored


def test_presets_calibrate_but_the_paper_keeps_mrgens_thresholds():
    assert C.FilterCfg().thresholds == "calibrated"
    assert C.load_config("tiny").filter.thresholds == "calibrated"
    cpu = C.load_config("cpu").filter  # since 2026-12-08: calibrated with rank selection (pass / relax / drop starved
    assert (cpu.thresholds, cpu.selection) == ("calibrated", "rank")  # the phantom demo: 6 of 48 masks; docs/filter.md)
    assert C.load_config("cpu3d").filter.thresholds == "absolute"  # measured values, not yet measured calibrated in 3D
    paper = C.load_config("paper").filter
    assert paper.thresholds == "absolute" and (paper.organ_iou, paper.organ_conf, paper.mean_iou, paper.mean_conf) == (
        0.7, 0.8, 0.8, 0.9)
    with pytest.raises(C.ConfigError, match="calibrated.*absolute"):
        C.load_config("tiny", overrides=["filter.thresholds=auto"])
    with pytest.raises(C.ConfigError, match="calibration_quantile"):
        C.load_config("tiny", overrides=["filter.calibration_quantile=25"])


def ring_pair(size=64, r_in=10, r_out=13, shift=0, seed=0):
    """A myocardium-like annulus (label 1, dark, 3 px) around a bright blood pool (label 2) on a grey background,
    with the mask rolled by ``shift`` px."""
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - size / 2, xx - size / 2)
    m = np.zeros((size, size), np.int64)
    m[d < r_in] = 2
    m[(d >= r_in) & (d < r_out)] = 1
    img = np.choose(m, [-0.3, -0.8, 0.7]) + 0.05 * np.random.default_rng(seed).standard_normal((size, size))
    return img.astype(np.float32), np.roll(m, shift, axis=1)


def test_classical_scorer_scores_an_aligned_ring_clearly_above_a_shifted_one():
    s = ClassicalScorer()  # the default (watershed)
    img, m = ring_pair()
    good = s.score(img, m)[1]
    for shift in (2, 4):
        bad = s.score(img, ring_pair(shift=shift)[1])[1]
        # a 3-px ring with its blood pool labelled (the cardiac layout): measured 0.94 vs 0.39 (2 px), 0.28 (4 px)
        assert good[0] >= 0.85 and good[0] > bad[0] + 0.4, (shift, good, bad)

