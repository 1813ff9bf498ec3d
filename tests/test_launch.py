"""Every stage after training under ``accelerate launch``: 2 CPU processes (gloo) write what 1 process writes.

A tiny engine is trained once (6 phantom subjects, so the test split holds 2 volumes; 4 masks x 3
candidates in batches of 2, so masks go out in groups of 2 whose jobs fill whole batches). Then
``synthesize, filter, (segment,) evaluate`` run through ``mrgen.pipeline.run`` as one plain process
and as ``accelerate launch --num_processes 2 --cpu``, both with OMP_NUM_THREADS=1 (the segmenters
the 1-process run trained are copied over: training on 2 processes is tests/train's). Compared byte
for byte: ``provenance.jsonl``, the candidate images, ``kept.json``, ``scores.jsonl``, the
evaluation files and ``image_quality.json`` (no artefact holds a wall-clock time); paths that name
the run folder are compared with it replaced. ``tests/launched_stages.py`` logs which process did
which mask, candidate file and test volume: they must split the work, not each do all of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mrgen import autoencoder, controller, curate, ldm, phantom
from mrgen.config import load_config
from mrgen.synthesize import load_candidates

SCRIPT = Path(__file__).with_name("launched_stages.py")
OVERRIDES = ["run.device=cpu", "phantom.subjects=6", "sample.max_masks=4", "sample.batch_size=2", "evaluate.max_images=16"]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _env() -> dict:
    import mrgen

    src = str(Path(mrgen.__file__).resolve().parents[1])
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": src,
            "ACCELERATE_CONFIG_FILE": "/nonexistent/accelerate.yaml"}  # no user config: the flags alone


def _run(cmd: list, wd: Path) -> str:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout


def _shares(wd: Path) -> dict:
    out: dict = {}
    for f in sorted((wd / "shares").glob("*.txt")):
        for line in f.read_text().splitlines():
            what, key = line.split(" ", 1)
            out.setdefault(what, {}).setdefault(f.stem, []).append(key)
    return out


def _json(path: Path, wd: Path):
    return json.loads(path.read_text().replace(str(wd), "<run>"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not ACCELERATE.exists():
        pytest.skip(f"accelerate's launcher is not installed next to {sys.executable}")
    base = tmp_path_factory.mktemp("launch")
    engine = base / "engine"
    cfg = load_config("tiny", overrides=[f"run.workdir={engine}", *OVERRIDES])
    for stage in (phantom, curate, autoencoder, ldm, controller):
        stage.run(cfg)
    one, two = base / "one", base / "two"
    for wd in (one, two):
        shutil.copytree(engine, wd)
    _run([sys.executable, SCRIPT, one, "synthesize,filter,segment,evaluate", *OVERRIDES], one)
    shutil.copytree(one / "segment", two / "segment")
    out = _run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", SCRIPT, two, "synthesize,filter,evaluate", *OVERRIDES], two)
    assert "rank 0 of 2 done" in out and "rank 1 of 2 done" in out
    return one, two


def test_two_processes_share_the_work(runs):
    one, two = runs
    alone, shared = _shares(one), _shares(two)
    for what in ("render", "score", "predict"):
        assert set(shared[what]) == {"0", "1"}, f"{what}: only process {set(shared[what])} did any"
        a, b = shared[what]["0"], shared[what]["1"]
        assert not set(a) & set(b), f"{what}: both processes did {set(a) & set(b)}"
        assert sorted(a + b) == sorted(alone[what]["0"]), what
    # masks go out in groups of lcm(3 candidates, batch 2) / 3 = 2 consecutive masks
    masks = sorted(alone["render"]["0"])
    assert sorted(shared["render"]["0"]) == masks[:2] and sorted(shared["render"]["1"]) == masks[2:]


def test_synthesis_equals_one_process(runs):
    one, two = runs
    assert (two / "synth" / "provenance.jsonl").read_bytes() == (one / "synth" / "provenance.jsonl").read_bytes()
    records = [json.loads(x) for x in (one / "synth" / "provenance.jsonl").read_text().splitlines()]
    assert len(records) == 4 * 3
    files = sorted(p.name for p in (one / "synth" / "candidates").glob("*.npz"))
    assert files == sorted(p.name for p in (two / "synth" / "candidates").glob("*.npz")) and len(files) == 4
    for name in files:
        a, b = (load_candidates(wd / "synth" / "candidates" / name) for wd in (one, two))
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["seeds"], b["seeds"]), name


def test_filter_equals_one_process(runs):
    one, two = runs
    a, b = (_json(wd / "filter" / "kept.json", wd) for wd in (one, two))
    assert a == b and len(a["kept"]) >= 4 and a["summary"]["candidates"] == 12
    lines = [[json.loads(x) for x in (wd / "filter" / "scores.jsonl").read_text().splitlines()]
             for wd in (one, two)]
    assert lines[0] == lines[1] and len(lines[0]) == 12
    assert (two / "filter" / "calibration.json").read_bytes() == (one / "filter" / "calibration.json").read_bytes()


def test_evaluation_equals_one_process(runs):
    one, two = runs
    for rel in ("eval/summary.json", "eval/image_quality.json", "eval/engine/results.json"):
        a, b = (_json(wd / rel, wd) for wd in (one, two))
        assert a == b, rel
    results = _json(one / "eval" / "engine" / "results.json", one)
    assert results["summary"]["volumes"] == 2 and len(results["cases"]) == 2
    assert not (two / "eval" / "engine" / ".parts").exists()  # merged and removed
    stages = json.loads((two / "stages.json").read_text())["stages"]
    first = json.loads((one / "stages.json").read_text())["stages"]
    assert {k: stages[k] for k in ("synthesize", "filter", "evaluate")} == {k: first[k] for k in ("synthesize", "filter", "evaluate")}
