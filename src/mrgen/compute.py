"""Compute accounting: CPU time (``resource.getrusage``, all threads) and peak resident memory.

``with Meter() as m: ...`` then ``m.result()`` -> ``{cpu_s, wall_s, peak_rss_mb, delta_rss_mb}``.
Peak memory is the process's resident set size sampled every 50 ms by a background thread
(``/proc/self/statm``), so it counts torch/numpy buffers too (``tracemalloc`` would miss torch's
allocator); ``delta_rss_mb`` is that peak minus the RSS when the block started (the block's own
footprint on top of the already-imported libraries). Off Linux the peak falls back to
``ru_maxrss`` (the process-lifetime maximum).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE / 2**20
    except OSError:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


class Meter:
    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self._stop = threading.Event()
        self.peak = self.start_rss = 0.0
        self.cpu_s = self.wall_s = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> "Meter":
        self.start_rss = self.peak = rss_mb()
        self._cpu0, self._wall0 = cpu_seconds(), time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        self.cpu_s = cpu_seconds() - self._cpu0
        self.wall_s = time.perf_counter() - self._wall0

    def result(self) -> dict:
        return {"cpu_s": round(self.cpu_s, 2), "wall_s": round(self.wall_s, 2),
                "peak_rss_mb": round(self.peak, 1), "delta_rss_mb": round(self.peak - self.start_rss, 1)}


def combine(parts: list[dict]) -> dict:
    """Several phases run one after the other: CPU and wall add up, memory takes the maximum."""
    parts = [p for p in parts if p]
    if not parts:
        return {"cpu_s": 0.0, "wall_s": 0.0, "peak_rss_mb": 0.0, "delta_rss_mb": 0.0}
    return {"cpu_s": round(sum(p["cpu_s"] for p in parts), 2), "wall_s": round(sum(p["wall_s"] for p in parts), 2),
            "peak_rss_mb": max(p["peak_rss_mb"] for p in parts), "delta_rss_mb": max(p["delta_rss_mb"] for p in parts)}
