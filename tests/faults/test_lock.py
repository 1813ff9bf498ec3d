"""Two runs on one folder: a live lock refuses the second run at once; a killed run's lock is taken over."""

import json
import os
import signal
import socket
import time

import pytest

from mrgen import lock
from fault_helpers import mrgen, popen

HOLD = "import sys, time; from mrgen import lock\nwith lock.hold(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)"

FAULT = pytest.mark.fault("two runs on one folder",
                          action="wait for the live run or use another -w; a killed run's lock is taken over by itself")


@pytest.fixture
def holder(tmp_path):
    """A live process holding ``tmp_path``'s lock."""
    p = popen("-c", HOLD, str(tmp_path))
    assert p.stdout.readline().strip() == "held"
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


@FAULT
def test_second_run_on_a_folder_in_use_is_refused_at_once(tmp_path, holder):
    t0 = time.time()
    res = mrgen("run", "--preset", "tiny", "-w", str(tmp_path))
    assert res.returncode == 2, res.stderr
    assert "is in use by another mrgen run" in res.stderr and f"pid {holder.pid}" in res.stderr
    assert "Traceback" not in res.stderr and time.time() - t0 < 30
    assert not (tmp_path / "config.yaml").exists()  # the refused run wrote nothing
    assert holder.poll() is None and json.loads((tmp_path / lock.LOCK_FILE).read_text())["pid"] == holder.pid


@FAULT
def test_lock_of_a_killed_run_is_taken_over(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / lock.LOCK_FILE).exists()  # SIGKILL leaves it behind
    res = mrgen("phantom", "--preset", "tiny", "-w", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert f"stale lock taken over (process {holder.pid} is not running)" in res.stderr.replace("\n", "")
    assert (tmp_path / "phantom" / "manifest.yaml").exists()
    assert not (tmp_path / lock.LOCK_FILE).exists()  # released at the end


def _foreign(path, lease_until):
    path.write_text(json.dumps({"schema": 1, "pid": 1, "host": socket.gethostname() + "-other", "started": 0,
                                "lease_until": lease_until}))


@FAULT
def test_lease_decides_for_a_run_on_another_host(tmp_path):
    _foreign(tmp_path / lock.LOCK_FILE, time.time() + 600)  # a live lease elsewhere: refused
    with pytest.raises(lock.LockError, match="in use by another mrgen run"):
        with lock.hold(tmp_path):
            pass
    _foreign(tmp_path / lock.LOCK_FILE, time.time() - 5)  # an expired one: taken over
    said = []
    with lock.hold(tmp_path, said.append):
        assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert len(said) == 1 and "lease expired" in said[0]


@FAULT
def test_lock_is_reentrant_and_renewed(tmp_path, monkeypatch):
    monkeypatch.setenv("MRGEN_LOCK_LEASE_S", "0.3")
    with lock.hold(tmp_path):
        first = json.loads((tmp_path / lock.LOCK_FILE).read_text())["lease_until"]
        with lock.hold(tmp_path):  # mrgen run -> a stage in the same process
            pass
        assert (tmp_path / lock.LOCK_FILE).exists()
        time.sleep(0.5)
        assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["lease_until"] > first  # renewed while alive
    assert not (tmp_path / lock.LOCK_FILE).exists()
