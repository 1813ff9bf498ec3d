"""Subprocess helpers of the fault suite: the ``mrgen`` CLI of this checkout, run with one thread."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def env(**extra: str) -> dict:
    e = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
         "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    e.pop("MRGEN_FAULT_KILL_AT", None)
    e.update(extra)
    return e


def mrgen(*args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    """``mrgen ARGS`` in a fresh interpreter; returns the finished process (stdout, stderr as text)."""
    return subprocess.run([sys.executable, "-m", "mrgen.cli", *args], env=env(**extra), capture_output=True,
                          text=True, timeout=timeout)


def popen(*args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=env(**extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
