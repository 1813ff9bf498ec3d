"""The spinal-cord smoke benchmark end to end through the CLI (real MRI; ~1-2 CPU min on 2 cores).

Skips cleanly when the shared data folder (``$MRGEN_SHARED_DATA`` or ../shared/data) is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrgen.cli import app

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MRGEN_SHARED_DATA") or REPO.parent / "shared" / "data")
BENCH = REPO / "benchmarks" / "spinalcord_t2_to_t1.yaml"
METHODS = ["source_only", "oracle", "intensity_aug", "domain_randomisation", "histogram_match"]

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not (DATA / "spinalcord" / "t2" / "t2.nii.gz").exists(), reason=f"no shared data at {DATA}"),
]


def test_spinalcord_smoke_benchmark_end_to_end_and_resume(tmp_path):
    wd = tmp_path / "bench"
    args = ["bench", str(BENCH), "-w", str(wd), f"data_root={DATA}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = json.loads((wd / "bench.json").read_text())
    assert [r["method"] for r in out["results"]] == METHODS * 2 and [r["fold"] for r in out["results"]] == [0] * 5 + [1] * 5
    s = out["summary"]
    for m in METHODS:
        folds = [r["metrics"]["mean_dice"] for r in out["results"] if r["method"] == m]
        assert set(s[m]["per_label"]) == {"spinal cord"} and len(folds) == 2 and None not in folds
        # one label: the mean Dice is the cord's Dice, averaged over the two folds
        assert s[m]["mean_dice"] == pytest.approx((folds[0] + folds[1]) / 2)
        assert s[m]["mean_dice"] == pytest.approx(s[m]["per_label"]["spinal cord"]["dice"])
        assert s[m]["segmenter_cpu_min"] > 0 and s[m]["peak_rss_mb"] > 100
    # the real target's own masks beat the other contrast's masks by a wide margin
    assert s["oracle"]["mean_dice"] > 0.5 and s["oracle"]["mean_dice"] > s["source_only"]["mean_dice"] + 0.3
    md = (wd / "bench.md").read_text()
    assert all(f"| {m} |" in md for m in METHODS) and "gap closed" in md
    for f in ("dice.png", "examples.png", "pairs.png"):
        assert (wd / f).stat().st_size > 5000
    # rerun: every (fold, method) is cached, nothing is trained again
    before = {p: p.stat().st_mtime for p in wd.glob("folds/*/*/segmenter/model.safetensors")}
    res = CliRunner().invoke(app, args + ["--methods", "oracle,source_only"])
    assert res.exit_code == 0, res.output
    assert "training the segmenter" not in res.output
    assert {p: p.stat().st_mtime for p in wd.glob("folds/*/*/segmenter/model.safetensors")} == before
    # the report still lists every method whose results are current
    assert [r["method"] for r in json.loads((wd / "bench.json").read_text())["results"]] == METHODS * 2
