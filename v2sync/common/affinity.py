"""Keep all of a v2sync process's threads on one CPU (Linux; elsewhere a no-op).

Why: CPython runs one thread's Python code at a time (the GIL), and a thread-per-connection
proxy hands the GIL from thread to thread at every blocking call. When the kernel spreads
those threads over several CPUs, each hand-off wakes a thread on another CPU (an
inter-processor interrupt; on a virtual machine, waking an idle vCPU), and that costs more
than running system calls in parallel gains. Measured on 2 cores with tools/bench.py's
workloads: p50 of connect + 1 KiB echo 22-25% lower (relay, VMess, VMess over TLS), bulk
throughput unchanged or higher.

Which CPU: several v2sync processes on one host (a client and a server, one per user)
should not pile onto one CPU, so each claims its CPU by binding an abstract unix socket
named after it. The kernel refuses a second bind of a name and frees it when the process
exits, however it exits; nothing is left on disk. Claims go from the highest-numbered CPU
down (CPU 0 usually takes more interrupts). When every allowed CPU is claimed, the process
stays unpinned.

``V2SYNC_CPU`` (or ``v2sync run --cpu``): ``auto`` (the default, as above), ``all`` (leave
scheduling to the kernel) or a CPU number (pin there, without a claim).

``V2SYNC_CPU_NAMESPACE`` (default empty) names a separate set of claims: a process claims
CPUs only against the processes of its own namespace. The test suite gives each test a
namespace of its own, so a ``v2sync run`` elsewhere on the host (or another test run)
cannot change which CPUs its processes get.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Iterable, Optional, Union

log = logging.getLogger(__name__)

ENV_VAR = "V2SYNC_CPU"
NAMESPACE_ENV_VAR = "V2SYNC_CPU_NAMESPACE"
AUTO, ALL = "auto", "all"
CLAIM_PREFIX = "v2sync-cpu"
# An abstract name shares sun_path's 108 bytes with the leading NUL, the prefix, the uid and
# the CPU number; 64 bytes of namespace leaves them room.
MAX_NAMESPACE_BYTES = 64

Setting = Union[str, int]


def parse_setting(value: str) -> Setting:
    """``auto``, ``all`` or a CPU number; ValueError says what was expected."""
    text = value.strip().lower()
    if text in (AUTO, ALL):
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    raise ValueError(f"{value!r} is not a CPU setting (expected auto, all or a CPU number)")


def supported() -> bool:
    return hasattr(os, "sched_setaffinity") and hasattr(socket, "AF_UNIX")


class CpuClaim:
    """A CPU this process has claimed; ``close()`` (or exiting) gives it back."""

    def __init__(self, cpu: int, sock: Optional[socket.socket] = None):
        self.cpu = cpu
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def claim_prefix(namespace: str = "") -> str:
    """The claim names' prefix for ``namespace`` ("" is the default, shared namespace)."""
    if len(namespace.encode()) > MAX_NAMESPACE_BYTES or "\0" in namespace:
        raise ValueError(f"${NAMESPACE_ENV_VAR}: {namespace[:80]!r} is not a CPU claim namespace "
                         f"(expected at most {MAX_NAMESPACE_BYTES} bytes, no NUL)")
    return f"{CLAIM_PREFIX}-{namespace}" if namespace else CLAIM_PREFIX


def claim_cpu(cpus: Iterable[int], prefix: str = CLAIM_PREFIX) -> Optional[CpuClaim]:
    """Claim the highest-numbered CPU of ``cpus`` no other process holds; None if all are."""
    uid = os.getuid()
    for cpu in sorted(cpus, reverse=True):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"\0{prefix}-{uid}-{cpu}")  # abstract namespace: leading NUL
        except OSError:
            sock.close()  # held by another process (EADDRINUSE), or refused: try the next
            continue
        return CpuClaim(cpu, sock)
    return None


def pin_threads(cpu: int) -> None:
    """Pin every thread that exists now; threads started later inherit the mask."""
    try:
        tids = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]  # no /proc: the calling thread (the only one, before start)
    for tid in tids:
        try:
            os.sched_setaffinity(tid, {cpu})
        except ProcessLookupError:
            pass  # the thread ended meanwhile


def apply(setting: Setting, namespace: Optional[str] = None) -> Optional[CpuClaim]:
    """Carry out ``setting`` for this process; returns the claim to keep (or None).

    ``namespace`` (default ``$V2SYNC_CPU_NAMESPACE``, else "") is where ``auto`` claims.
    ValueError names a CPU this process may not use, or a bad namespace."""
    if setting == ALL or not supported():
        return None
    allowed = os.sched_getaffinity(0)
    if isinstance(setting, int):
        if setting not in allowed:
            raise ValueError(f"CPU {setting} is not available to this process "
                             f"(allowed: {', '.join(map(str, sorted(allowed)))})")
        pin_threads(setting)
        log.info("threads pinned to CPU %d", setting)
        return CpuClaim(setting)
    if namespace is None:
        namespace = os.environ.get(NAMESPACE_ENV_VAR, "")
    prefix = claim_prefix(namespace)  # checked even where there is nothing to choose
    if len(allowed) < 2:
        return None  # one CPU: nothing to choose
    claim = claim_cpu(allowed, prefix)
    if claim is None:
        log.info("every CPU is claimed by another v2sync process; threads not pinned")
        return None
    pin_threads(claim.cpu)
    log.info("threads pinned to CPU %d", claim.cpu)
    return claim
