"""The fault suite's reference: one uninterrupted ``mrgen run --preset tiny`` (a subprocess, once per session)."""

from __future__ import annotations

import shutil
import time

import pytest
from fault_helpers import mrgen


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """``(run folder, seconds)`` of an uninterrupted tiny run; never modify it (copy it with ``run_copy``)."""
    wd = tmp_path_factory.mktemp("reference") / "run"
    t0 = time.time()
    res = mrgen("run", "--preset", "tiny", "-w", str(wd))
    assert res.returncode == 0, res.stderr[-3000:]
    return wd, time.time() - t0


@pytest.fixture
def run_copy(reference, tmp_path):
    """A private copy of the reference run folder."""
    dst = tmp_path / "run"
    shutil.copytree(reference[0], dst)
    return dst
