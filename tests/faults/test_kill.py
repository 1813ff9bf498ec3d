"""Kill anywhere: ``mrgen run --preset tiny`` SIGKILLed at many points, rerun to completion, equals an uninterrupted run.

Points: (1) the fault hook in :func:`mrgen.io._commit` kills the process at its k-th atomic write, before or
after the rename. Kills are chained: a run killed at its k-th write is rerun with the same hook, killed again
``STRIDE`` writes later, and so on until a rerun completes; every kill is one injection point (it lands on a
different write of the whole run, and the recovery itself is killed too). (2) kills at times taken from the
reference run's write log: the middle of each stage's window. After each kill every finished file must read
completely (no partial file is left where a later stage would read it), the rerun must not fail, and the final
folder must equal the reference (:func:`compare.differences`).

``MRGEN_FAULT_POINTS=n`` caps the number of points; unset: ``DEFAULT_POINTS`` (10, what CI runs);
``MRGEN_FAULT_POINTS=all``: the full suite (about 60 points; not yet run to completion, docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from compare import differences, validate_tree
from fault_helpers import env, mrgen

STRIDE = 5  # writes between two kills of a chain: a tiny run makes 135 atomic writes, so ~27 kills per chain
TIMED_STAGES = ("curate", "autoencoder", "ldm", "synthesize", "filter", "segment", "evaluate")


DEFAULT_POINTS = 10  # the default (CI) run: on 2 cores the full suite (~60 points) takes far longer than CI allows


def _cap() -> int | None:
    v = os.environ.get("MRGEN_FAULT_POINTS", str(DEFAULT_POINTS))
    return None if v in ("all", "full") else int(v)


def _budget(share: float, full: int) -> int:
    cap = _cap()
    return full if cap is None else max(1, round(cap * share))


def _stage_of(path: str, wd) -> str:
    rel = os.path.relpath(path, wd).split(os.sep)[0]
    return {"curated": "curate", "synth": "synthesize", "nnunet": "export", "eval": "evaluate", "config.yaml": "run",
            "stages.json": "run", "report.md": "evaluate"}.get(rel, rel)


def _run_log(wd, log, **extra):
    return mrgen("run", "--preset", "tiny", "-w", str(wd), MRGEN_FAULT_LOG=str(log), **extra)


def _last_kill(log) -> dict:
    recs = [json.loads(ln) for ln in log.read_text().splitlines()] if log.exists() else []
    kills = [r for r in recs if r.get("kill")]
    return kills[-1] if kills else {}


KNOWN = pytest.mark.xfail(strict=False, reason=(
    "open (issue #18): after a kill the rerun completes, but the final folder differs from the uninterrupted run "
    "(audit/audit.json, and resumed ldm/controller runs); see docs/reliability.md"))


@KNOWN
@pytest.mark.parametrize("moment, offset", [("before", 1), ("after", 3)])
def test_kill_at_atomic_writes(tmp_path, reference, moment, offset, fault_report):
    wd, log = tmp_path / "run", tmp_path / "faults.jsonl"
    limit = _budget(0.4, 10**6)
    points: list = []
    name = f"kill -9 at an atomic write, {moment} the rename"
    action = "rerun the same command: finished files are intact, training resumes from its checkpoint"
    with _reported(fault_report, name, points, action):
        _chain(wd, log, moment, offset, limit, points, reference)


class _reported:
    """Report ``points`` even when the test stops early (a crash or a timeout counts as one point not survived)."""

    def __init__(self, report, name, points, action):
        self.args = (report, name, points, action)

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        report, name, points, action = self.args
        if exc is not None and not isinstance(exc, AssertionError):
            points.append({"stage": "?", "survived": False, "why": f"{typ.__name__}: {exc}"[:300]})
        report(name, points, action)
        return False


def _chain(wd, log, moment, offset, limit, points, reference):
    for i in range(limit):
        k = offset if i == 0 else STRIDE
        res = _run_log(wd, log, MRGEN_FAULT_KILL_AT=f"{k}:{moment}")
        if res.returncode == 0:
            break  # the rest of the run had fewer than k writes
        kill = _last_kill(log)
        ok = res.returncode == -signal.SIGKILL and bool(kill)
        bad = validate_tree(wd) if ok else []
        points.append({"stage": _stage_of(kill.get("path", str(wd)), wd), "file": kill.get("path", ""),
                       "survived": ok and not bad, "why": "" if ok and not bad else (bad or res.stderr[-500:])})
        log.write_text("")
    final = _run_log(wd, log)
    diff = differences(wd, reference[0]) if final.returncode == 0 else [final.stderr[-1500:]]
    for p in points if diff else []:
        p.update(survived=False, why=str(diff[:3]))
    assert points and all(p["survived"] for p in points), [p for p in points if not p["survived"]][:3]
    assert not diff, diff


def _windows(reference) -> dict:
    """``{stage: (first, last)}`` seconds after process start of each stage's writes in the reference run."""
    wd, recs = reference[0], reference[2]
    t0 = reference[3]
    out: dict = {}
    for r in recs:
        s = _stage_of(r["path"], wd)
        lo, hi = out.get(s, (r["time"] - t0, r["time"] - t0))
        out[s] = (min(lo, r["time"] - t0), max(hi, r["time"] - t0))
    return out


@KNOWN
def test_kill_at_times_from_the_stage_log(tmp_path, reference, fault_report):
    points: list = []
    with _reported(fault_report, "kill -9 at a time in a stage (from the stage log)", points,
                   "rerun the same command: each stage resumes or redoes its unfinished part"):
        _timed(tmp_path, reference, points)


def _timed(tmp_path, reference, points):
    windows = _windows(reference)
    stages = [s for s in TIMED_STAGES if s in windows][: _budget(0.2, len(TIMED_STAGES))]
    failures = []
    for s in stages:
        wd = tmp_path / s
        lo, hi = windows[s]
        at = (lo + hi) / 2 if hi > lo else lo
        p = subprocess.Popen([sys.executable, "-m", "mrgen.cli", "run", "--preset", "tiny", "-w", str(wd)], env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            p.wait(timeout=at)
            killed = False  # finished before the kill time (a faster machine than the reference's)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            killed = True
        err = p.communicate()[1]
        rules = [ln.strip("─ ").strip() for ln in err.splitlines() if ln.startswith("─")]
        bad = validate_tree(wd)
        final = mrgen("run", "--preset", "tiny", "-w", str(wd))
        diff = differences(wd, reference[0]) if final.returncode == 0 else [final.stderr[-1500:]]
        ok = not bad and not diff
        points.append({"stage": rules[-1] if rules else s, "at_s": round(at, 2), "killed": killed, "survived": ok,
                       "why": "" if ok else (bad + diff)[:3]})
        if not ok:
            failures.append(points[-1])
    assert not failures, failures
