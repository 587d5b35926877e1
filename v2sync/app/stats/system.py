"""The process's own figures, for GetSysStats and the metrics endpoint (stdlib only)."""
from __future__ import annotations

import gc
import os
import time
from typing import Any, Mapping

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident memory now (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def gc_collections() -> int:
    """Runs of the cyclic collector, all generations (Go's NumGC)."""
    return sum(generation["collections"] for generation in gc.get_stats())


class GcPauses:
    """Total time the cyclic collector ran (Go's PauseTotalNs), through ``gc.callbacks``
    while installed."""

    def __init__(self) -> None:
        self.total_ns = 0
        self._started = 0

    def __call__(self, phase: str, info: Mapping[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
        elif self._started:
            self.total_ns += time.perf_counter_ns() - self._started
            self._started = 0

    def install(self) -> None:
        gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
