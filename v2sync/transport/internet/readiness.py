"""Where idle relay readers wait without a thread (the design card's *selectors*).

A relay's socket reader that finds nothing to read for ``PARK_AFTER`` seconds yields a
``Readable`` wait (``common.task.Wait``): its task gives its thread back, and its socket
waits here, in one selector shared by the Instance. When bytes arrive (or the socket is
shut down: an activity timer's abort, the peer's close), the waiter hands the task back to
a pooled thread, which reads. So a held, idle connection keeps fewer threads: a CPython
thread blocked in ``recv`` costs 18-20 KiB (its stack pages, thread state and frames),
which was the largest part of what a held connection cost.

One thread, started on first use, does nothing but this. With epoll (Linux) a parking
thread registers its socket itself; elsewhere it queues the socket and pokes the waiter
through a socket pair to register it. A waker only hands a task to the pool, so the waiter
never waits on a connection.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import select
import selectors
import socket
import threading
import time
from typing import Deque, Optional, Tuple

from v2sync.common.task import Wait, Waker, outside_slot

log = logging.getLogger(__name__)


# The waiter's longest sleep: only a bound (every queued socket and ``stop`` poke it).
MAX_SELECT_WAIT = 5.0
# What ``stop`` waits for the thread to leave.
STOP_TIMEOUT = 2.0
# After a failed start (no file descriptors, no threads): how long before the next try,
# and how long a reader that could not park waits for its socket before reading again.
START_RETRY = 1.0


class ReadWaiter:
    """One selector and one thread for the sockets of parked relay readers."""

    def __init__(self, name: str = "read-waiter"):
        self.name = name
        # Made with the thread, on first use: an Instance that never parks a reader (a
        # config test) opens nothing.
        self._selector: Optional[selectors.BaseSelector] = None
        self._poke_r: Optional[socket.socket] = None
        self._poke_w: Optional[socket.socket] = None
        self._incoming: Deque[Tuple[socket.socket, Waker]] = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self._retry_at = 0.0  # after a failed start, no new try before this (monotonic)
        self._failing = False
        self._stopped = False
        self._direct = False  # sockets registered by the parking thread (epoll)

    def when_readable(self, sock: socket.socket, wake: Waker) -> None:
        """Call ``wake`` once (from the waiter's thread) when ``sock`` is readable."""
        if self._stopped:
            wake()  # shut down: the task runs its next step now and finds its socket aborted
            return
        if self._thread is None and not self._start():
            # No waiter (see _start): the reader keeps its thread, waiting here a while
            # before it reads again. Woken at once, readers of a process out of file
            # descriptors parked and woke in a loop: a core and ~20,000 log lines a second
            # (found by a review).
            outside_slot(wait_readable, sock, START_RETRY)
            wake()
            return
        if self._direct:
            self._register_here(sock, wake)
            return
        self._incoming.append((sock, wake))
        if self._stopped:  # stopped meanwhile: its sweep may have run already
            self._wake_queued()
            return
        self._poke()

    def _register_here(self, sock: socket.socket, wake: Waker) -> None:
        """epoll takes a registration from any thread, the waiter's ``epoll_wait`` included:
        registered from the parking thread, the waiter is not woken to do it (a poke, its
        drain and a context switch fewer per park)."""
        try:
            self._selector.register(sock, selectors.EVENT_READ, wake)  # type: ignore[union-attr]
        except (ValueError, KeyError, OSError):
            wake()  # closed, or registered already: its step will see
            return
        if self._stopped:  # stopped meanwhile: its sweep may have run before we registered
            self._wake_registered(sock)

    def _wake_registered(self, sock: socket.socket) -> None:
        """Wake ``sock``'s waker unless someone took it off the selector first."""
        try:
            key = self._selector.unregister(sock)  # type: ignore[union-attr]
        except (KeyError, ValueError):
            return
        key.data()

    def waiting(self) -> int:
        """Sockets registered now (the poke pair's own end not counted)."""
        selector = self._selector
        return max(len(selector.get_map()) - 1, 0) if selector is not None else 0

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the thread; every socket still waiting is woken (its task then ends
        against an aborted socket). Idempotent."""
        if self._stopped:
            return
        with self._start_lock:  # a racing first use either started or sees it stopped
            self._stopped = True
        thread = self._thread
        if thread is None:
            return
        self._poke()
        thread.join(timeout)
        if not thread.is_alive():
            self._wake_all()
            for resource in (self._selector, self._poke_r, self._poke_w):
                if resource is not None:  # made with the thread
                    resource.close()

    def _start(self) -> bool:
        """The selector, its poke pair and its thread, once; False when they cannot be
        made (the process is out of file descriptors or threads). Nothing is kept then, and
        a reader that wanted to park goes on reading in its own thread, as before parking
        existed; the next park tries again."""
        with self._start_lock:
            if self._thread is not None or self._stopped:
                return True
            if time.monotonic() < self._retry_at:
                return False
            try:
                with contextlib.ExitStack() as made:  # closed unless all of it is made
                    selector = made.enter_context(selectors.DefaultSelector())
                    poke_r, poke_w = (made.enter_context(end) for end in socket.socketpair())
                    for end in (poke_r, poke_w):
                        end.setblocking(False)
                    selector.register(poke_r, selectors.EVENT_READ, None)
                    thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._selector, self._poke_r, self._poke_w = selector, poke_r, poke_w
                    self._direct = isinstance(selector, getattr(selectors, "EpollSelector", ()))
                    thread.start()
                    made.pop_all()
            except (OSError, RuntimeError) as e:
                self._selector = self._poke_r = self._poke_w = None
                self._retry_at = time.monotonic() + START_RETRY
                log.log(logging.DEBUG if self._failing else logging.WARNING,
                        "%s: cannot start (%s); idle readers keep their threads", self.name, e)
                self._failing = True  # said once, until it starts
                return False
            self._thread = thread
            return True

    def _poke(self) -> None:
        try:
            self._poke_w.send(b"\0")  # type: ignore[union-attr]
        except OSError:  # full (a poke is already pending) or closed: nothing to add
            pass

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None  # made before the thread
        while not self._stopped:
            for key, _ in selector.select(MAX_SELECT_WAIT):
                if key.data is None:
                    _drain(key.fileobj)  # type: ignore[arg-type]
                    continue
                selector.unregister(key.fileobj)
                _call(key.data)
            self._take_incoming(selector)

    def _take_incoming(self, selector: selectors.BaseSelector) -> None:
        while self._incoming:
            sock, wake = self._incoming.popleft()
            try:
                selector.register(sock, selectors.EVENT_READ, wake)
            except (ValueError, KeyError, OSError):
                _call(wake)  # closed, or registered already: its step will see

    def _wake_queued(self) -> None:
        while True:
            try:
                _, wake = self._incoming.popleft()
            except IndexError:
                return
            wake()

    def _wake_all(self) -> None:
        """Shutdown: every socket still waiting, and every one queued, is woken."""
        self._wake_queued()
        selector = self._selector
        if selector is None:
            return
        for key in list(selector.get_map().values()):
            if key.data is not None:
                self._wake_registered(key.fileobj)  # type: ignore[arg-type]


def _drain(poke_r: socket.socket) -> None:
    """Read every poke queued (bounded by the pair's buffer)."""
    try:
        while poke_r.recv(4096):
            pass
    except OSError:  # BlockingIOError: drained
        pass


def _call(wake: Waker) -> None:
    """Run a waker in the waiter's thread; a failing one is logged, and the waiter goes on
    serving every other parked socket."""
    try:
        wake()
    except Exception:
        log.exception("read-waiter: a waker failed")


class Readable(Wait):
    """Wait until a socket has bytes (or its end: EOF, an error, a shutdown)."""

    __slots__ = ("sock", "waiter")

    def __init__(self, sock: socket.socket, waiter: ReadWaiter):
        self.sock = sock
        self.waiter = waiter

    def arm(self, wake: Waker) -> None:
        self.waiter.when_readable(self.sock, wake)

    def block(self) -> None:
        wait_readable(self.sock, None)


def wait_readable(sock: socket.socket, timeout: Optional[float]) -> bool:
    """Block until ``sock`` is readable (bytes, EOF, an error, or a shutdown by ``abort``);
    False if ``timeout`` (seconds; None: no limit) passed first."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
