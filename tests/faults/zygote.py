"""A fork server for the kill suite: ``mrgen`` with its imports done once, each run a forked child.

Importing torch, MONAI and mrgen's stages costs about 7 CPU-seconds, more than most of what a tiny run does
between two kills, so the suite's 50-odd kill-and-rerun points would spend most of their time importing. A
:class:`Zygote` is one ``python`` process (one thread, nothing computed yet) that imports the CLI and every stage
module once, then forks one child per request: the child sets its environment, points fds 1 and 2 at files,
calls ``mrgen.cli.main(args)`` and exits; SIGKILL by the fault hook (``MRGEN_FAULT_KILL_AT``) ends only the
child. Each child is a fresh process for mrgen's purposes (its own pid, its own lock, its own write counter);
what it shares with its siblings is the imported code, read-only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from fault_helpers import BLOCK_NETWORK, env

SERVER = BLOCK_NETWORK + r"""
import json, os, signal, sys, time
import torch, monai  # noqa: F401 - the imports every run would repeat
from mrgen import cli, pipeline
pipeline._functions()  # imports every stage module
out = os.fdopen(os.dup(1), "w", buffering=1)
print(json.dumps({"ready": os.getpid()}), file=out)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.clear()
            os.environ.update(req["env"], HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
            fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for p in (req["stdout"], req["stderr"])]
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            try:
                cli.main(req["args"])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    t0 = time.time()
    deadline = t0 + req["timeout"]
    watch = req.get("kill_in")  # {"log", "match", "delay"}: SIGKILL `delay` s after the first write matching
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if watch and watch.get("seen") is None and os.path.exists(watch["log"]):
            with open(watch["log"]) as fh:
                if any(watch["match"] in ln for ln in fh):
                    watch["seen"] = time.time()
                    deadline = watch["seen"] + watch["delay"]
        armed = bool(watch) and watch.get("seen") is not None
        if time.time() > deadline:  # armed: SIGKILL (rc -9); a hung run: killed, reported as SIGALRM (rc -14)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = signal.SIGKILL if armed else signal.SIGALRM
            break
        time.sleep(0.02)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    print(json.dumps({"rc": rc, "seconds": time.time() - t0}), file=out)
"""


class Zygote:
    """``with Zygote() as z: z.mrgen("run", "--preset", "tiny", ...)`` -> a ``CompletedProcess`` (rc < 0: killed)."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mrgen-zygote-"))
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], env=env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(self.tmp / "server.err", "w"), text=True)
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("the kill suite's fork server did not start: "
                               + (self.tmp / "server.err").read_text()[-2000:])
        self.n = 0

    def mrgen(self, *args: str, timeout: float = 900, kill_in: dict | None = None,
              **extra: str) -> subprocess.CompletedProcess:
        """``mrgen ARGS`` in a forked child with env ``extra``; ``kill_in={"log", "match", "delay"}``: SIGKILL it ``delay`` seconds after the first line of the
        write log ``log`` (its ``MRGEN_FAULT_LOG``) that contains ``match``. The result's ``seconds``: from the
        fork to the child's end."""
        self.n += 1
        out, err = self.tmp / f"{self.n}.out", self.tmp / f"{self.n}.err"
        req = {"args": list(args), "env": env(**extra), "stdout": str(out), "stderr": str(err),
               "timeout": timeout, "kill_in": kill_in}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the kill suite's fork server died: " + (self.tmp / "server.err").read_text()[-2000:])
        reply = json.loads(line)
        res = subprocess.CompletedProcess(["mrgen", *args], reply["rc"], out.read_text(errors="replace"),
                                          err.read_text(errors="replace"))
        res.seconds = reply["seconds"]
        out.unlink()
        err.unlink()
        return res

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
