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
    for k in ("MRGEN_FAULT_KILL_AT", "MRGEN_FAULT_LOG"):
        e.pop(k, None)
    e.update(extra)
    return e


def mrgen(*args: str, timeout: float = 1800, **extra: str) -> subprocess.CompletedProcess:
    """``mrgen ARGS`` in a fresh interpreter; returns the finished process (stdout, stderr as text)."""
    return subprocess.run([sys.executable, "-m", "mrgen.cli", *args], env=env(**extra), capture_output=True,
                          text=True, timeout=timeout)


def popen(*args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=env(**extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# every network socket blocked (AF_UNIX allowed); each attempt is a line in $MRGEN_NET_LOG (read at the attempt)
BLOCK_NETWORK = """
import os, socket
def _blocked(*a, **k):
    if a and isinstance(a[0], socket.socket) and a[0].family == socket.AF_UNIX:
        return _orig[k.pop("_name", "connect")](*a, **k)
    with open(os.environ.get("MRGEN_NET_LOG", os.devnull), "a") as fh:
        fh.write(repr(a[1:3] if a and isinstance(a[0], socket.socket) else a[:2]) + "\\n")
    raise OSError("network access blocked by tests/faults")
_orig = {n: getattr(socket.socket, n) for n in ("connect", "connect_ex", "sendto")}
for _n in _orig:
    setattr(socket.socket, _n, (lambda n: lambda *a, **k: _blocked(*a, _name=n, **k))(_n))
socket.create_connection = socket.getaddrinfo = socket.gethostbyname = _blocked
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
"""
