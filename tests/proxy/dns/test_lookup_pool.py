"""The dns outbound's lookup pool: which waiting lookup a freed thread takes (threads
of a real ThreadGroup; no sockets)."""
from __future__ import annotations

import threading
from typing import Callable, Iterator, List

import pytest

from v2sync.common.task import ThreadGroup
from v2sync.proxy.dns import outbound as dns_outbound

WAIT = 5.0


@pytest.fixture
def group() -> Iterator[ThreadGroup]:
    threads = ThreadGroup("lookups", idle_timeout=WAIT)
    yield threads
    threads.shutdown(WAIT)


def _job(order: List[str], name: str, gate: threading.Event) -> Callable[[], None]:
    def answer() -> None:
        assert gate.wait(WAIT)
        order.append(name)
    return answer


def test_a_sessions_first_lookup_goes_before_the_newer_ones_of_busy_sessions(
        group: ThreadGroup, monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread, held; then a busy session's lookup, another session's first, and the
    busy one's next: the first goes next, then the busy ones newest first."""
    monkeypatch.setattr(dns_outbound, "MAX_LOOKUP_THREADS", 1)
    pool = dns_outbound._LookupPool(group)
    order: List[str] = []
    gate, done = threading.Event(), threading.Semaphore(0)
    pool.submit(_job(order, "held", gate), done.release, "held")
    pool.submit(_job(order, "busy-1", gate), done.release, "busy", busy=True)
    pool.submit(_job(order, "first", gate), done.release, "first", busy=False)
    pool.submit(_job(order, "busy-2", gate), done.release, "busy", busy=True)
    gate.set()
    for _ in range(4):
        assert done.acquire(timeout=WAIT)
    assert order == ["held", "first", "busy-2", "busy-1"]


def test_past_the_cap_a_busy_sessions_oldest_lookup_is_dropped_first(
        group: ThreadGroup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns_outbound, "MAX_LOOKUP_THREADS", 1)
    monkeypatch.setattr(dns_outbound, "MAX_WAITING_LOOKUPS", 2)
    pool = dns_outbound._LookupPool(group)
    order: List[str] = []
    dropped: List[str] = []
    gate, done = threading.Event(), threading.Semaphore(0)
    pool.submit(_job(order, "held", gate), done.release, "held")
    pool.submit(_job(order, "first", gate), done.release, "first")
    pool.submit(_job(order, "busy-1", gate), lambda: dropped.append("busy-1"), "b", busy=True)
    pool.submit(_job(order, "busy-2", gate), done.release, "b", busy=True)
    assert dropped == ["busy-1"]  # done() alone: the lookup was never made
    gate.set()
    for _ in range(3):
        assert done.acquire(timeout=WAIT)
    assert order == ["held", "first", "busy-2"]
