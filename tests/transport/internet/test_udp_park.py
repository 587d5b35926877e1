"""``recv_or_park``: a UDP reader written as steps. It reads what is there, waits its
linger in the thread, then yields a ``Readable`` wait (the ReadWaiter's selector); it ends
with b"" once stopped, since a shut-down UDP socket polls readable but a non-blocking recv
on it fails with EAGAIN. Real UDP sockets on loopback."""
import socket
import threading
import time

import pytest

from v2sync.common.net import Address, Destination
from v2sync.transport.internet.readiness import Readable, ReadWaiter
from v2sync.transport.internet.udp import dial_udp, recv_or_park, shutdown_udp

from support.steps import step_by_hand

ICMP_SETTLE = 0.2
TIMEOUT = 5.0


@pytest.fixture
def pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def waiter():
    waiter = ReadWaiter("test-waiter")
    yield waiter
    waiter.stop()


def _no(*_):
    return False


def test_a_datagram_already_there_is_read_without_a_wait(pair, waiter) -> None:
    a, b = pair
    b.sendto(b"here", a.getsockname())
    time.sleep(0.05)
    assert step_by_hand(recv_or_park(a, 100, waiter, 0, _no)) == (b"here", [])


def test_a_datagram_within_the_linger_is_read_in_the_thread(pair, waiter) -> None:
    a, b = pair
    timer = threading.Timer(0.05, lambda: b.sendto(b"soon", a.getsockname()))
    timer.start()
    try:
        assert step_by_hand(recv_or_park(a, 100, waiter, TIMEOUT, _no)) == (b"soon", [])
    finally:
        timer.join()


def test_an_idle_socket_parks_in_the_selector_and_reads_once_woken(pair, waiter) -> None:
    a, b = pair
    steps = recv_or_park(a, 100, waiter, 0, _no)
    wait = next(steps)
    assert isinstance(wait, Readable) and wait.sock is a
    woken = threading.Event()
    wait.arm(woken.set)
    assert not woken.wait(0.1)
    b.sendto(b"late", a.getsockname())
    assert woken.wait(TIMEOUT)
    with pytest.raises(StopIteration) as done:
        next(steps)
    assert done.value.value == b"late"


def test_a_stopped_reader_ends_with_an_empty_read(pair, waiter) -> None:
    a, _ = pair
    stopped = []
    steps = recv_or_park(a, 100, waiter, 0, lambda: bool(stopped))
    wait = next(steps)
    woken = threading.Event()
    wait.arm(woken.set)
    stopped.append(1)
    shutdown_udp(a)  # what an abort does: the parked reader wakes ...
    assert woken.wait(TIMEOUT)
    with pytest.raises(StopIteration) as done:  # ... and ends, not parks again
        next(steps)
    assert done.value.value == b""


def test_icmp_errors_of_earlier_sends_are_read_past(waiter) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with dial_udp(Destination(Address.parse("127.0.0.1"), port)) as sock:
        sock.send(b"to nobody")
        time.sleep(ICMP_SETTLE)
        steps = recv_or_park(sock, 100, waiter, 0, _no)
        assert isinstance(next(steps), Readable)  # the error skipped: nothing to read
        steps.close()
