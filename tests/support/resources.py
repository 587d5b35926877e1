"""Thread, file-descriptor and memory readings for leak tests and the benchmark.

A leak test takes a baseline, runs traffic, tears down, then waits (bounded) for the counts
to come back: threads and sockets are released asynchronously, so an immediate comparison
would be flaky, and an unbounded wait would hang the suite instead of failing it.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional

POLL_SECONDS = 0.05
FD_DIR = "/proc/self/fd"


def count_threads() -> int:
    """Live Python threads in this process, the main thread included."""
    return threading.active_count()


def count_open_fds() -> int:
    """Open file descriptors of this process (Linux ``/proc``)."""
    return len(os.listdir(FD_DIR))


def open_fd_targets() -> Dict[int, str]:
    """fd -> what it points at (``socket:[123]``, a path, ...), for failure messages."""
    targets = {}
    for name in os.listdir(FD_DIR):
        try:
            targets[int(name)] = os.readlink(os.path.join(FD_DIR, name))
        except OSError:
            continue  # closed between listdir and readlink (e.g. listdir's own fd)
    return targets


@dataclass(frozen=True)
class ResourceSnapshot:
    """Counts plus identities, so a failure can name exactly what is extra."""

    threads: int
    fds: int
    thread_idents: FrozenSet[int]
    fd_numbers: FrozenSet[int]


def snapshot() -> ResourceSnapshot:
    """The current threads and fds (call before the code under test runs)."""
    return ResourceSnapshot(
        threads=count_threads(),
        fds=count_open_fds(),
        thread_idents=frozenset(t.ident for t in threading.enumerate() if t.ident is not None),
        fd_numbers=frozenset(open_fd_targets()),
    )


def _leak_report(threads: int, fds: int, before: Optional[ResourceSnapshot]) -> str:
    known = before.thread_idents if before is not None else frozenset({threading.main_thread().ident})
    extra_threads: List[str] = sorted(t.name for t in threading.enumerate() if t.ident not in known)
    targets = open_fd_targets()
    extra_fds = {n: t for n, t in targets.items() if before is None or n not in before.fd_numbers}
    return (
        f"threads {count_threads()} (baseline {threads}), extra: {extra_threads}; "
        f"fds {len(targets)} (baseline {fds}), {'extra' if before else 'open'}: {extra_fds}"
    )


def wait_for_baseline(threads: int, fds: int, timeout: float = 10.0, *,
                      before: Optional[ResourceSnapshot] = None) -> None:
    """Poll until at most ``threads`` threads and ``fds`` fds remain, or raise AssertionError.

    The message lists the thread names (and fds) not present in ``before`` if a snapshot is
    given, otherwise every non-main thread and every open fd.
    """
    deadline = time.monotonic() + timeout
    while True:
        if count_threads() <= threads and count_open_fds() <= fds:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"resources not released after {timeout} s: {_leak_report(threads, fds, before)}")
        time.sleep(POLL_SECONDS)


def wait_for_snapshot(before: ResourceSnapshot, timeout: float = 10.0) -> None:
    """``wait_for_baseline`` against a snapshot taken with ``snapshot()``."""
    wait_for_baseline(before.threads, before.fds, timeout, before=before)


def wait_for(condition: Callable[[], object], timeout: float = 10.0,
             interval: float = 0.02) -> None:
    """Poll until ``condition()`` is true, or raise AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


def process_rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS`` in ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid} (a zombie?)")


def process_thread_count(pid: int) -> int:
    """OS threads of process ``pid`` (``Threads`` in ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Threads line for pid {pid}")
