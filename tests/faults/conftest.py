"""The fault suite's reference run and its report.

``reference``: one uninterrupted ``mrgen run --preset tiny`` (a subprocess, once per session) with its write log.
Report: a test marked ``@pytest.mark.fault(name, action)`` counts as one injection point of that fault (survived =
passed); a test with many points records them with the ``fault_report`` fixture. With ``MRGEN_FAULT_REPORT=file``
the session writes ``{fault: {points, survived, action, stages, failed}}`` there; ``scripts/reliability.py``
renders docs/reliability.md from it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from zygote import Zygote

_REPORT: dict = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "fault(name, action): one injection point of that fault for docs/reliability.md")


def _add(name: str, action: str, points: list[dict]) -> None:
    row = _REPORT.setdefault(name, {"points": 0, "survived": 0, "action": action, "stages": {}, "failed": []})
    for p in points:
        row["points"] += 1
        row["survived"] += bool(p["survived"])
        if p.get("stage"):
            row["stages"][p["stage"]] = row["stages"].get(p["stage"], 0) + 1
        if not p["survived"]:
            row["failed"].append({k: str(v)[:300] for k, v in p.items()})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    mark = item.get_closest_marker("fault")
    if mark and rep.when == "call":
        _add(mark.args[0], mark.kwargs.get("action", ""), [{"survived": rep.passed, "test": item.name}])


def pytest_sessionfinish(session):
    path = os.environ.get("MRGEN_FAULT_REPORT")
    if path and _REPORT:
        old = json.loads(open(path).read()) if os.path.exists(path) and os.environ.get("MRGEN_FAULT_REPORT_MERGE") else {}
        with open(path, "w") as fh:
            json.dump({**old, **_REPORT}, fh, indent=1)


@pytest.fixture
def fault_report():
    """``fault_report(name, points, action)``: record points ``{"stage", "survived", ...}`` of fault ``name``."""
    return lambda name, points, action: _add(name, action, points)


@pytest.fixture(scope="session")
def zygotes():
    """Fork servers of the kill suite (:mod:`zygote`): one per core, at most 2 (CI's machine has 2)."""
    zs = [Zygote() for _ in range(max(1, min(2, os.cpu_count() or 1)))]
    yield zs
    for z in zs:
        z.close()


@pytest.fixture(scope="session")
def reference(tmp_path_factory, zygotes):
    """``(run folder, seconds, write log records, start time, network attempts log)`` of an uninterrupted tiny run
    with sockets blocked (a child of the kill suite's fork server; test_network.py checks it made no attempt);
    copy it to modify. Start time: the request to the fork server (the kill suite times its kills the same way).

    ``MRGEN_FAULT_REFERENCE=folder``: make it there once and reuse it in later sessions (while developing).
    """
    keep = os.environ.get("MRGEN_FAULT_REFERENCE")
    base = Path(keep) if keep else tmp_path_factory.mktemp("reference")
    wd, log, net, done = base / "run", base / "writes.jsonl", base / "network.log", base / "reference.json"
    if not done.exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        t0 = time.time()
        net.touch()
        res = zygotes[0].mrgen("run", "--preset", "tiny", "-w", str(wd), MRGEN_NET_LOG=str(net), MRGEN_FAULT_LOG=str(log))
        assert res.returncode == 0, res.stderr[-3000:]
        done.write_text(json.dumps({"t0": t0, "seconds": time.time() - t0}))
    rec = json.loads(done.read_text())
    writes = [json.loads(ln) for ln in log.read_text().splitlines()]
    return wd, rec["seconds"], writes, rec["t0"], net


@pytest.fixture
def run_copy(reference, tmp_path):
    """A private copy of the reference run folder."""
    dst = tmp_path / "run"
    shutil.copytree(reference[0], dst)
    return dst
