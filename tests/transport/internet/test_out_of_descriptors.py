"""A process out of file descriptors (EMFILE): a dial fails as a dial does (TransportError:
retried, logged on one line, as 4.34's "socket: too many open files"), and the shared read
waiter that cannot start leaves the reader in its thread, keeping nothing open. Found by a
hostile-input review: a dial's EMFILE was logged as a crash with a traceback, and a waiter
that failed to start ended a working connection and leaked an epoll descriptor.

The limit is real: RLIMIT_NOFILE lowered, for the test's own process, to the lowest free
descriptor number, so the next one cannot be made; it is restored at once."""
from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from typing import Iterator, List

import pytest

from v2sync.common.errors import TransportError
from v2sync.common.net import Destination
from v2sync.transport.internet.readiness import ReadWaiter
from v2sync.transport.internet.tcp import dial_tcp
from v2sync.transport.internet.udp import dial_udp, open_udp


@contextlib.contextmanager
def no_descriptors_left() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("dial", [
    lambda: dial_tcp(Destination.tcp("127.0.0.1", 9), 1.0),
    lambda: open_udp(Destination.udp("127.0.0.1", 9)),
    lambda: dial_udp(Destination.udp("127.0.0.1", 9)),
], ids=["tcp", "udp-open", "udp-dial"])
def test_a_dial_out_of_descriptors_is_a_dial_failure(dial) -> None:
    with no_descriptors_left(), pytest.raises(TransportError, match="Too many open files"):
        dial()


def test_a_read_waiter_that_cannot_start_wakes_its_reader_and_keeps_nothing() -> None:
    waiter = ReadWaiter("emfile-test")
    a, b = socket.socketpair()
    woken: List[str] = []
    try:
        before = _descriptors()
        with no_descriptors_left():
            waiter.when_readable(a, lambda: woken.append("at once"))
        assert woken == ["at once"]  # the reader goes on in its own thread
        assert _descriptors() == before  # no selector or pair left behind
        waiter.when_readable(a, lambda: woken.append("readable"))  # descriptors again: starts
        b.send(b"x")
        for _ in range(500):  # bounded: 5 s
            if len(woken) == 2:
                break
            time.sleep(0.01)
        assert woken == ["at once", "readable"]
    finally:
        waiter.stop()
        a.close()
        b.close()
