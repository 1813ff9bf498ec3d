"""The harness on the tiny fold: pairs -> segmenter -> evaluation, caching/resume, grouped labels, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mrgen import io
from mrgen.bench import report, run_one
from mrgen.bench import spec as S


@pytest.fixture
def tiny_bench(tiny_fold):
    ctx, roles, cfg = tiny_fold
    wd = cfg.workdir
    tree = {"name": "tiny", "config": {"preset": "tiny"}, "methods": {"source_only": {}, "oracle": {}, "histogram_match": {}},
            "evaluate": {"groups": {"liver": [1], "organs": [1, 2]}}, "examples": 2, "seed": 0, "budget_cpu_min": 5}
    spec = S.Spec("tiny", Path("tiny.yaml"), tree, wd, folds=[S.Fold(0, ("sub-0", "sub-1"), ("sub-2",), ("sub-3",))])
    base = cfg
    labels = {int(k): v for d in io.read_json(wd / "curated" / "labels.json").values() for k, v in d.items()}
    from mrgen.curate.index import Index

    return spec, base, Index(wd / "curated" / "index.parquet"), labels


def test_run_one_trains_evaluates_and_resumes(tiny_bench, monkeypatch):
    import mrgen.segment as seg_mod

    spec, base, index, labels = tiny_bench
    calls = []
    real = seg_mod.train_segmenter
    monkeypatch.setattr(seg_mod, "train_segmenter", lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    fold = spec.folds[0]
    results = [run_one(spec, base, index, fold, m, labels, log=lambda *_: None) for m in spec.methods]
    assert calls == ["source_only", "oracle", "histogram_match"]
    for r in results:
        assert set(r["metrics"]["per_label"]) == {"liver", "organs"}  # the groups are the reported labels
        per, case = r["metrics"]["per_label"], r["metrics"]["per_case"]
        assert r["metrics"]["volumes"] == 1 and len(case) == 1 and case[0]["volume"] == "toy/sub-3/T2"
        assert r["metrics"]["mean_dice"] == pytest.approx((per["liver"]["dice"] + per["organs"]["dice"]) / 2)
        assert per["liver"]["dice"] == case[0]["dice_liver"] and per["organs"]["dice"] == case[0]["dice_organs"]
        assert per["liver"]["dice"] == r["metrics"]["labels_raw"]["per_label"]["liver"]["dice"]  # group [1] = label 1
        assert set(r["metrics"]["labels_raw"]["per_label"]) == {"liver", "spleen"}
        c = r["compute"]
        assert c["segmenter"]["cpu_s"] > 0 and c["total"]["peak_rss_mb"] > 50 and c["method"]["cpu_s"] >= 0
        folder = base.workdir / "folds" / "0" / r["method"]
        assert (folder / "pairs.npz").exists() and (folder / "segmenter" / "model.safetensors").exists()
        ex = np.load(folder / "eval" / "examples.npz")
        assert ex["image"].shape == ex["pred"].shape == ex["gt"].shape == (2, 16, 16)
    # oracle: trained on the target subject's annotated T2 slices
    assert results[1]["n_pairs"] == 4
    # rerun: everything cached, nothing retrained, same numbers
    again = [run_one(spec, base, index, fold, m, labels, log=lambda *_: None) for m in spec.methods]
    assert calls == ["source_only", "oracle", "histogram_match"] and again == results
    # a changed evaluation setting re-evaluates without retraining
    spec.tree["evaluate"]["groups"] = {"spleen": [2]}
    r = run_one(spec, base, index, fold, "source_only", labels, log=lambda *_: None)
    assert calls == ["source_only", "oracle", "histogram_match"] and set(r["metrics"]["per_label"]) == {"spleen"}
    # a changed method parameter retrains that method only
    spec.tree["methods"]["histogram_match"] = {"per": "image"}
    run_one(spec, base, index, fold, "histogram_match", labels, log=lambda *_: None)
    assert calls[-1] == "histogram_match" and len(calls) == 4

    out = report.write(spec, base.workdir, again, labels, {"cpu_s": 1.0})
    md = Path(out["report"]).read_text()
    for m in spec.methods:
        assert f"| {m} |" in md
    assert "gap closed" in md
    summary = json.loads(Path(out["json"]).read_text())["summary"]
    # gap closed = (m - source_only) / (oracle - source_only) is undefined without a gap: on this fold the 4-step
    # oracle (one target subject's slices) scores below source_only (measured 0.493 vs 0.512), so it is NaN for every
    # method, never 0 (test_aggregate_mean_sd_and_gap covers a fold with a gap)
    assert summary["oracle"]["mean_dice"] < summary["source_only"]["mean_dice"]
    assert all(np.isnan(summary[m]["gap_closed"]) for m in spec.methods)
    for f in ("dice.png", "examples.png", "pairs.png"):
        assert (base.workdir / f).stat().st_size > 2000


def test_aggregate_mean_sd_and_gap():
    def res(m, fold, d):
        return {"method": m, "fold": fold, "n_pairs": 10, "notes": {}, "over_budget": m == "x",
                "metrics": {"mean_dice": d, "mean_hd95": 5.0, "per_label": {"a": {"dice": d, "hd95": 5.0}}},
                "compute": {"method": {"cpu_s": 60.0}, "segmenter": {"cpu_s": 120.0},
                            "total": {"peak_rss_mb": 100.0}}}

    rs = [res("source_only", 0, 0.2), res("source_only", 1, 0.4), res("oracle", 0, 0.8), res("oracle", 1, 0.8),
          res("x", 0, 0.5), res("x", 1, 0.5)]
    s = report.aggregate(rs, ["source_only", "oracle", "x"])
    assert s["source_only"]["mean_dice"] == pytest.approx(0.3)
    assert s["source_only"]["mean_dice_sd"] == pytest.approx(0.2 / math.sqrt(2))  # sample sd of two values: |a - b| / √2
    assert s["x"]["gap_closed"] == pytest.approx(0.4) and s["oracle"]["gap_closed"] == pytest.approx(1.0)
    assert s["source_only"]["gap_closed"] == 0.0  # a gap to close: source_only itself closes none of it
    assert s["x"]["vs_source_only"] == pytest.approx(0.5 / 0.3) and s["source_only"]["vs_source_only"] == pytest.approx(1.0)
    assert s["x"]["over_budget"] == [0, 1] and s["x"]["method_cpu_min"] == pytest.approx(1.0)
    flat = report.aggregate([res("source_only", 0, 0.5), res("oracle", 0, 0.5), res("x", 0, 0.7)], ["source_only", "oracle", "x"])
    assert all(np.isnan(flat[m]["gap_closed"]) for m in flat)  # no gap (oracle == source_only): undefined, not 0


def test_engine_stamp_follows_the_resolved_engine_config(tiny_bench, monkeypatch):
    """A changed mrgen default (not only a changed benchmark file) re-runs the engine methods, and only them."""
    from mrgen import config as C
    from mrgen.bench import stamps

    spec, base, _, labels = tiny_bench
    spec.tree["methods"]["mrgen"] = {}
    fold = spec.folds[0]
    before = {m: stamps(spec, base, fold, m, labels) for m in ("mrgen", "source_only")}
    assert stamps(spec, base, fold, "mrgen", labels) == before["mrgen"]  # deterministic
    monkeypatch.setattr(C.ControllerCfg, "__init__", _with_default(C.ControllerCfg.__init__, target_fraction=0.25))
    assert stamps(spec, base, fold, "mrgen", labels) != before["mrgen"]
    assert stamps(spec, base, fold, "source_only", labels) == before["source_only"]


def test_engine_stamp_ignores_the_engine_presets_segment_section(tiny_bench, monkeypatch):
    """No engine stage reads the engine config's ``segment`` (the bench's segmenters take ``config.segment``), so a
    preset's segment default leaves the engine methods current; ``config.segment`` still restamps them."""
    from mrgen import config as C
    from mrgen.bench import stamps

    spec, base, _, labels = tiny_bench
    spec.tree["methods"]["mrgen"] = {}
    fold = spec.folds[0]
    before = stamps(spec, base, fold, "mrgen", labels)
    assert S.engine_config(spec, base, Path("e"), fold).segment.engine_set == "synthetic"
    monkeypatch.setattr(C.SegmentCfg, "__init__", _with_default(C.SegmentCfg.__init__, engine_set="source"))
    assert S.engine_config(spec, base, Path("e"), fold).segment.engine_set == "source"  # the engine's own changed
    assert stamps(spec, base, fold, "mrgen", labels) == before
    base2 = S.bench_config(spec, base.workdir)
    assert base2.segment.engine_set == "source"  # the benchmark's own segment section: its segmenters' set
    assert stamps(spec, base2, fold, "mrgen", labels) != before


def test_bench_stamps_ignore_where_and_on_what_device_a_run_happens(tiny_bench, monkeypatch):
    """run.device / run.workdir change no result (contract.NO_EFFECT), so a cached fold stays current."""
    from mrgen import config as C
    from mrgen.bench import stamps

    spec, base, _, labels = tiny_bench
    spec.tree["methods"]["mrgen"] = {}
    fold = spec.folds[0]
    before = {m: stamps(spec, base, fold, m, labels) for m in ("mrgen", "source_only")}
    monkeypatch.setattr(C.RunCfg, "__init__", _with_default(C.RunCfg.__init__, device="cuda:1"))
    moved = C._merge(base, {"run": {"device": "cuda:1", "workdir": "/elsewhere"}})
    assert {m: stamps(spec, moved, fold, m, labels) for m in before} == before
    seeded = C._merge(base, {"run": {"seed": int(base.run.seed) + 1}})  # a setting with an effect still counts
    assert stamps(spec, seeded, fold, "source_only", labels) != before["source_only"]


def _with_default(init, **defaults):
    def wrapped(self, *a, **k):
        init(self, *a, **{**defaults, **k})
    return wrapped
