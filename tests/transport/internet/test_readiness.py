"""ReadWaiter (transport/internet/readiness.py): parked sockets wake once, on bytes, on a
shutdown, at stop; nothing is opened before first use. Real socket pairs."""
from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Iterator, List, Tuple

import pytest

from v2sync.transport.internet.readiness import Readable, ReadWaiter, wait_readable

WAIT = 5.0
HAS_EPOLL = hasattr(selectors, "EpollSelector")


@pytest.fixture(autouse=True, params=["default", "poll"])
def selector_kind(request, monkeypatch):
    """Every test twice: with the platform's selector (epoll here: parking threads register
    their sockets themselves) and with poll (the waiter registers what it is poked about)."""
    if request.param == "poll":
        monkeypatch.setattr(selectors, "DefaultSelector", selectors.PollSelector)
    return request.param


@contextlib.contextmanager
def _pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@contextlib.contextmanager
def _waiter() -> Iterator[ReadWaiter]:
    waiter = ReadWaiter("test-waiter")
    try:
        yield waiter
    finally:
        waiter.stop(WAIT)


def _waker(woken: List[str], name: str, event: threading.Event):
    def wake() -> None:
        woken.append(name)
        event.set()
    return wake


def test_nothing_is_opened_or_started_before_first_use():
    waiter = ReadWaiter("test-waiter")
    assert waiter._thread is None and waiter._selector is None and waiter.waiting() == 0
    waiter.stop(WAIT)  # and stopping it then is fine


def test_with_epoll_the_parking_thread_registers_without_a_poke(selector_kind):
    woken: List[str] = []
    event = threading.Event()
    with _waiter() as waiter, _pair() as (a, b):
        Readable(a, waiter).arm(_waker(woken, "a", event))
        direct = selector_kind == "default" and HAS_EPOLL
        assert waiter._direct is direct
        if direct:  # registered already, in this thread; the waiter was not poked
            assert waiter.waiting() == 1 and not waiter._incoming
            assert not wait_readable(waiter._poke_r, 0)
        b.sendall(b"x")
        assert event.wait(WAIT) and woken == ["a"]


def test_a_parked_socket_wakes_once_when_bytes_arrive():
    woken: List[str] = []
    event = threading.Event()
    with _waiter() as waiter, _pair() as (a, b):
        Readable(a, waiter).arm(_waker(woken, "a", event))
        assert not event.wait(0.1)  # nothing to read: still parked
        assert waiter.waiting() == 1
        b.sendall(b"x")
        assert event.wait(WAIT) and woken == ["a"]
        assert waiter.waiting() == 0  # unregistered before its waker ran
        b.sendall(b"y")  # more bytes do not wake it again
        assert not wait_readable(b, 0.1) and woken == ["a"]


def test_a_shutdown_socket_wakes_its_reader():
    """An activity timer's abort shuts the socket down: the parked reader must run."""
    woken: List[str] = []
    event = threading.Event()
    with _waiter() as waiter, _pair() as (a, b):
        waiter.when_readable(a, _waker(woken, "a", event))
        a.shutdown(socket.SHUT_RDWR)
        assert event.wait(WAIT) and woken == ["a"]


def test_only_the_ready_socket_wakes():
    woken: List[str] = []
    ready = threading.Event()
    with _waiter() as waiter, _pair() as (a, b), _pair() as (c, d):
        waiter.when_readable(a, _waker(woken, "a", ready))
        waiter.when_readable(c, _waker(woken, "c", threading.Event()))
        d.sendall(b"x")
        b.sendall(b"")  # nothing for a
        assert not ready.wait(0.2)
        assert woken == ["c"] and waiter.waiting() == 1


def test_stop_wakes_every_parked_socket_and_later_ones_at_once():
    woken: List[str] = []
    with _pair() as (a, b), _pair() as (c, d):
        waiter = ReadWaiter("test-waiter")
        waiter.when_readable(a, _waker(woken, "a", threading.Event()))
        waiter.when_readable(c, _waker(woken, "c", threading.Event()))
        waiter.stop(WAIT)
        assert sorted(woken) == ["a", "c"]
        assert not waiter._thread.is_alive()
        waiter.when_readable(a, _waker(woken, "late", threading.Event()))
        assert woken[-1] == "late"


def test_a_closed_socket_is_woken_at_once_rather_than_lost():
    woken: List[str] = []
    event = threading.Event()
    with _waiter() as waiter:
        a, b = socket.socketpair()
        a.close()
        b.close()
        waiter.when_readable(a, _waker(woken, "closed", event))
        assert event.wait(WAIT) and woken == ["closed"]


def test_block_waits_in_the_calling_thread_until_readable():
    with _pair() as (a, b):
        threading.Timer(0.05, lambda: b.sendall(b"x")).start()
        Readable(a, ReadWaiter("unused")).block()
        assert a.recv(1) == b"x"


def test_a_failing_waker_is_logged_and_the_others_are_still_served(caplog):
    woken: List[str] = []
    event = threading.Event()

    def broken() -> None:
        raise RuntimeError("broken waker")

    with _waiter() as waiter, _pair() as (a, b), _pair() as (c, d):
        waiter.when_readable(a, broken)
        b.sendall(b"x")
        waiter.when_readable(c, _waker(woken, "c", event))
        d.sendall(b"y")
        assert event.wait(WAIT) and woken == ["c"]
    assert "a waker failed" in caplog.text


_OUT_OF_FDS = r"""
import logging, resource, socket, sys, time
from v2sync.transport.internet import readiness
from v2sync.transport.internet.readiness import ReadWaiter
START_RETRY = readiness.START_RETRY = 0.3  # shortened: the suite's time (set before use)
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.levelname)
logging.getLogger("v2sync").addHandler(Keep())
logging.getLogger("v2sync").setLevel(logging.DEBUG)
idle, _peer = socket.socketpair()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
fillers = []
while True:
    try:
        fillers.append(socket.socket())
    except OSError:
        break
waiter, wakes = ReadWaiter("test-waiter"), []
started = time.monotonic()
for _ in range(50):  # a parked reader's loop: park, woken, read nothing, park again
    if time.monotonic() - started > 2.5 * START_RETRY:
        break
    waiter.when_readable(idle, lambda: wakes.append(1))
parks = len(wakes)
for filler in fillers:
    filler.close()
time.sleep(START_RETRY + 0.2)
waiter.when_readable(idle, lambda: None)  # descriptors again: it starts
print(parks, records.count("WARNING"), waiter._thread is not None)
waiter.stop(5)
"""


def test_out_of_descriptors_a_reader_waits_in_its_thread_and_it_is_said_once(
        selector_kind):
    """A waiter that cannot start (the process is out of descriptors) left each parking
    reader to be woken at once, and it parked again: a core and ~20,000 log lines a second
    (found by a review). Now each waits START_RETRY in its own thread, the failure is said
    once, and the waiter starts once descriptors are back. In a child process, whose
    descriptor limit the test lowers."""
    import subprocess
    import sys

    from support.procs import REPO_ROOT

    done = subprocess.run([sys.executable, "-c", _OUT_OF_FDS], capture_output=True, text=True,
                          timeout=30, env={"PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr
    parks, warnings, started = done.stdout.split()
    assert int(parks) <= 4 and warnings == "1" and started == "True"
