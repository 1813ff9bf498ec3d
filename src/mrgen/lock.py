"""One run per run folder: ``<workdir>/.mrgen.lock``, taken by ``mrgen run`` and every stage command.

The lock file is created with ``O_CREAT | O_EXCL`` (atomic on a local file system) and holds
``{"schema", "pid", "host", "started", "lease_until"}``. While the run lives a daemon thread
renews the lease every ``LEASE_S / 3`` seconds. A lock is *stale*, and is taken over with a
message, when its process is gone: on this host its pid is not alive, or (any host) its lease
expired (a killed run stops renewing; a recycled pid does not keep a dead run's lock). Taking the lock deletes the
temp files of atomic writes a killed run left (:func:`mrgen.io.sweep_temp`). A live
lock refuses the second run at once with :class:`LockError` (a ValueError: the CLI prints one
line and exits 2). The lock is re-entrant within one process (``mrgen run`` -> stage functions).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mrgen import io

LOCK_FILE = ".mrgen.lock"
SCHEMA = 1


def lease_s() -> float:
    """Seconds a lock stays valid without renewal (``MRGEN_LOCK_LEASE_S``, default 60)."""
    return float(os.environ.get("MRGEN_LOCK_LEASE_S", "60"))


class LockError(ValueError):
    """The run folder is in use by another live run."""


_held: dict[str, int] = {}  # resolved lock path -> nesting depth (this process)
_mutex = threading.Lock()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _record() -> dict:
    now = time.time()
    return {"schema": SCHEMA, "pid": os.getpid(), "host": socket.gethostname(), "started": now,
            "lease_until": now + lease_s()}


def read_lock(path: Path) -> dict | None:
    """The lock's record; ``{}`` for an unreadable (half-written) one, ``None`` when there is none."""
    try:
        raw = json.loads(path.read_text())
        return raw if isinstance(raw, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def stale_reason(rec: dict, now: float | None = None) -> str:
    """Why the lock ``rec`` is stale ("" when its run is alive)."""
    now = time.time() if now is None else now
    if not rec:
        return "the lock file is unreadable"
    if rec.get("host") == socket.gethostname() and not alive(int(rec.get("pid", -1))):
        return f"process {rec.get('pid')} is not running"
    if float(rec.get("lease_until", 0)) < now:
        return f"its lease expired {now - float(rec.get('lease_until', 0)):.0f} s ago"
    return ""


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(_record(), fh)
    return True


def _renew(path: Path, stop: threading.Event) -> None:
    while not stop.wait(lease_s() / 3):
        rec = read_lock(path)
        if not rec or rec.get("pid") != os.getpid():
            return  # taken over (we were presumed dead): stop touching it
        rec["lease_until"] = time.time() + lease_s()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.renew")
        try:
            tmp.write_text(json.dumps(rec))
            os.replace(tmp, path)
        except OSError:  # a full disk must not kill the run; the lease may lapse
            pass


@contextmanager
def hold(workdir: str | Path, say: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold ``<workdir>/.mrgen.lock`` for the block; refuse (LockError) when a live run holds it. Under
    ``accelerate launch`` process 0 holds it for every process of the launch (the others pass through)."""
    from mrgen.dist import launched

    if launched()[0] != 0:
        yield Path(workdir) / LOCK_FILE
        return
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    path = wd / LOCK_FILE
    key = str(path.resolve())
    with _mutex:
        if _held.get(key):
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield path
        finally:
            with _mutex:
                _held[key] -= 1
        return
    for _ in range(5):
        if _create(path):
            break
        rec = read_lock(path)
        if rec is None:
            continue  # released meanwhile
        why = stale_reason(rec)
        if not why:
            raise LockError(
                f"{wd} is in use by another mrgen run (pid {rec.get('pid')} on {rec.get('host')}, lock {path}); "
                f"wait for it to finish or use another run folder (-w). If that run is gone, delete {path}")
        aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
        try:
            os.replace(path, aside)  # one taker wins; the others see the new lock next round
            os.unlink(aside)
        except FileNotFoundError:
            continue
        (say or _stderr)(f"{path}: stale lock taken over ({why})")
    else:
        raise LockError(f"{path}: could not take the lock (it keeps changing); is another run starting? Retry")
    left = io.sweep_temp(wd)  # no other run writes here: temp files are a killed run's, never finished files
    if left:
        (say or _stderr)(f"{wd}: removed {len(left)} temp file(s) left by an interrupted run")
    stop = threading.Event()
    threading.Thread(target=_renew, args=(path, stop), daemon=True, name="mrgen-lock-lease").start()
    with _mutex:
        _held[key] = 1
    try:
        yield path
    finally:
        stop.set()
        with _mutex:
            _held.pop(key, None)
        rec = read_lock(path)
        if rec and rec.get("pid") == os.getpid():
            path.unlink(missing_ok=True)
