"""The processes of one command under a launcher (``accelerate launch``, ``torchrun``).

Every stage after training spreads its work over the launcher's processes with no argument of
its own: :func:`processes` reads the process index and world size (``RANK`` / ``WORLD_SIZE``,
which both launchers set, through :class:`accelerate.PartialState`, so the process group is the
one training uses: gloo on CPU, NCCL on GPUs). A stage works on its share (:meth:`Procs.share`),
writes per-process outputs, and :meth:`Procs.on_main` then runs the merge on process 0 after a
barrier while the others wait; its JSON result, or its error, reaches every process, so all of
them return the same value or raise the same error. Without a launcher this is one process and
nothing is initialised. This module imports no stage.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def launched() -> tuple[int, int]:
    """``(rank, world size)`` the launcher set in the environment; ``(0, 1)`` without a launcher."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def state(device: str = "cpu"):
    """The :class:`accelerate.PartialState` of this process (initialises the process group once, and leaves it
    at exit)."""
    from accelerate import PartialState

    if not _registered:
        _registered.append(atexit.register(_close))
    return PartialState(cpu=str(device).startswith("cpu"))


@dataclass
class Procs:
    rank: int = 0
    world: int = 1
    _state: Any = None
    _parts: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        """This process's items of ``items``: ``items[rank::world]``."""
        return list(items)[self.rank::self.world]

    def barrier(self) -> None:
        if self.world > 1:
            self._state.wait_for_everyone()

    def total(self, n: int) -> int:
        """The sum of ``n`` over the processes (every process gets it)."""
        if self.world == 1:
            return int(n)
        import torch
        import torch.distributed as td

        t = torch.tensor([int(n)], dtype=torch.long, device=self._state.device)
        td.all_reduce(t)
        return int(t.item())

    def put(self, folder: str | Path, meta, arrays: dict | None = None) -> None:
        """Leave this process's part (JSON ``meta`` + named arrays) for :meth:`parts`: ``folder/rank-<r>.npz``
        (written atomically), or kept in memory when there is one process."""
        import numpy as np

        from mrgen import io

        if self.world == 1:
            self._parts[str(folder)] = (meta, dict(arrays or {}))
            return
        with io.atomic_path(Path(folder) / f"rank-{self.rank}.npz", suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, meta=np.array(json.dumps(meta)), **(arrays or {}))

    def parts(self, folder: str | Path) -> list[tuple]:
        """On process 0 after a barrier (inside :meth:`on_main`): every process's ``(meta, arrays)`` left with
        :meth:`put` in ``folder``, in process order; the folder is removed."""
        import numpy as np

        if self.world == 1:
            return [self._parts.pop(str(folder))]
        out = []
        for r in range(self.world):
            with np.load(Path(folder) / f"rank-{r}.npz", allow_pickle=False) as z:
                out.append((json.loads(str(z["meta"])), {k: z[k] for k in z.files if k != "meta"}))
        shutil.rmtree(folder, ignore_errors=True)
        return out

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """After a barrier, ``fn()`` on process 0 only; every process returns its result (JSON round trip on the
        others) or raises its error (the same class where it can be rebuilt from its message)."""
        if self.world == 1:
            return fn()
        self.barrier()
        error = None
        if self.main:
            try:
                result = fn()
                text = json.dumps({"ok": result}, default=str)
            except Exception as exc:
                error = exc
                text = json.dumps({"error": [type(exc).__module__, type(exc).__qualname__, str(exc)]})
            self._broadcast(text)
            if error is not None:
                raise error
            return result
        got = json.loads(self._broadcast(None))
        if "error" in got:
            raise _rebuild(*got["error"])
        return got["ok"]

    def _broadcast(self, text: str | None) -> str:
        """Process 0's ``text`` on every process (two broadcasts: length, then UTF-8 bytes; no pickle)."""
        import torch
        import torch.distributed as td

        dev = self._state.device
        data = text.encode() if text is not None else b""
        n = torch.tensor([len(data)], dtype=torch.long, device=dev)
        td.broadcast(n, 0)
        buf = (torch.tensor(list(data), dtype=torch.uint8, device=dev) if text is not None
               else torch.empty(int(n.item()), dtype=torch.uint8, device=dev))
        td.broadcast(buf, 0)
        return bytes(buf.cpu().tolist()).decode()


def _rebuild(module: str, name: str, message: str) -> Exception:
    try:
        cls = getattr(importlib.import_module(module), name)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(message)
    except Exception:  # a class that cannot be rebuilt from its message alone
        pass
    return RuntimeError(f"{name} on process 0: {message}")


def processes(device: str = "cpu") -> Procs:
    """This process's place among the launcher's: ``Procs(rank, world)``; one process without a launcher."""
    rank, world = launched()
    if world <= 1:
        return Procs()
    st = state(device)
    return Procs(st.process_index, st.num_processes, st)


_registered: list = []


def _close() -> None:
    """At exit: leave the process group (a gloo group still open at interpreter exit aborts the process)."""
    import datetime

    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        # every process reaches its exit before any leaves the group: a gloo peer that closes its connection while
        # another process still tears down aborted that process now and then ("terminate called without an active
        # exception", exit -6, after all its work was done). Bounded, so a process whose peer died does not hang.
        if td.get_backend() == "gloo":
            try:
                td.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            except Exception:  # a peer already gone: leave anyway
                pass
        td.destroy_process_group()
