"""Where accepted connections wait until they have something for a thread to do.

The design card says "threaded synchronous proxy *with selectors*": a connection costs a
thread only once its handshake is complete. Until then it is *parked*: its socket is
non-blocking and registered in one selector, and its handshake is a generator of steps
(TLS, WebSocket upgrade, HTTP header, then the proxy's own greeting) that feeds the pure
codecs as bytes arrive. A step that finds no bytes yields its deadline; the selector
resumes it when the socket is readable, or throws ``HandshakeTimeout`` into it when the
deadline passes. So 10,000 silent connections are 10,000 sockets and generators, not
10,000 threads (4.34 holds them as goroutines, which cost about as little).

Threads are leaders and followers (as the listeners were): one thread at a time waits in
``select``. It accepts, runs handshake steps itself (short CPU work that the GIL would
serialise anyway, so no hand-over is worth it), and when a handshake completes it hands
the waiting role to a pooled thread and serves that connection in place, in blocking mode:
no hand-over sits between a client's last handshake byte and the work it asks for.

No fixed cap on parked connections: if the process runs out of file descriptors, accept
fails, and the oldest unfinished handshakes are shed (closed, logged) to make room.
Everything here runs in the leader thread; other threads only queue calls and wake it.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from typing import Callable, Deque, Dict, Generator, List, Optional, Tuple, Union

from v2sync.common.errors import HandshakeTimeout, TransportError
from v2sync.common.task import Steps as TaskSteps
from v2sync.common.task import ThreadGroup, at_once, outside_slot

log = logging.getLogger(__name__)

# Connections accepted per readable event of one listener, so a flood on one port cannot
# starve the handshakes already parked.
ACCEPT_BATCH = 64
# Out of descriptors with nothing left to shed: stop accepting on that listener this long.
ACCEPT_BACKOFF = 0.1
# Unfinished handshakes shed per EMFILE: some room for the connection that hit it, and
# for the next few.
SHED_BATCH = 8
# The leader's longest sleep when nothing is due: only a bound (calls and close wake it).
MAX_SELECT_WAIT = 5.0
_FD_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Handoff:
    """A connection whose handshake is complete: what a worker thread does with it."""

    def serve(self) -> None:
        """Run in a worker thread, in blocking mode, until the connection ends."""
        raise NotImplementedError

    def serve_steps(self) -> TaskSteps[None]:
        """``serve`` as steps (``ThreadGroup.spawn_steps``): a relay reader that parks
        while idle gives its worker thread back. By default, ``serve`` in one step."""
        return at_once(self.serve)

    def drop(self) -> None:
        """No thread could be had for it: close it."""
        raise NotImplementedError


# A parked connection's handshake: yields the deadline it waits for, returns its Handoff
# (None if the connection ended during the handshake).
Steps = Generator[float, None, Optional[Handoff]]
# What a listener calls for each accepted socket (already non-blocking).
StartConnection = Callable[[socket.socket], Optional[Steps]]


class _Listener:
    __slots__ = ("sock", "start", "name", "cleanup")

    def __init__(self, sock: socket.socket, start: StartConnection, name: str,
                 cleanup: Callable[[], None]):
        self.sock = sock
        self.start = start
        self.name = name
        self.cleanup = cleanup  # e.g. unlink a unix socket file


class _Parked:
    # ``fd`` is kept because the handshake may close its socket before the selector
    # unregisters it; looking a closed socket up would scan every registration.
    __slots__ = ("sock", "fd", "steps", "deadline")

    def __init__(self, sock: socket.socket, steps: Steps):
        self.sock = sock
        self.fd = sock.fileno()
        self.steps = steps
        self.deadline = 0.0  # 0: not registered in the selector yet


# What a deadline is filed for: a parked handshake, or a timed call (a paused listener).
_Due = Union[_Parked, Callable[[], None]]


class HandshakeSelector:
    """The selector every inbound listener of an Instance shares."""

    def __init__(self, workers: ThreadGroup, name: str = "handshakes"):
        self.name = name
        self._workers = workers
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: Deque[Callable[[], None]] = collections.deque()  # append is thread-safe
        self._parked: Dict[_Parked, None] = {}  # insertion order: oldest first, for shedding
        self._deadlines: List[Tuple[float, int, _Due]] = []  # lazy heap: stale entries skipped
        self._seq = itertools.count()
        self._listeners: Dict[socket.socket, _Listener] = {}
        self._stopping = False
        self._closed = threading.Event()
        self._started = False

    # -- from any thread ----------------------------------------------------------------
    def add_listener(self, sock: socket.socket, start: StartConnection, name: str,
                     cleanup: Callable[[], None] = lambda: None) -> None:
        sock.setblocking(False)
        listener = _Listener(sock, start, name, cleanup)
        self._call(lambda: self._register_listener(listener))

    def remove_listener(self, sock: socket.socket, wait: float = 0.0) -> bool:
        """Stop accepting on ``sock`` and close it (handshakes already parked go on). The
        leader closes it; given ``wait``, return once it has (True) or that many seconds
        have passed: the API's RemoveInbound answers with the port already closed, as
        4.34's does, where the kernel would otherwise still take connections."""
        closed = threading.Event()

        def close() -> None:
            self._close_listener(sock)
            closed.set()
        self._call(close)
        if not self._started:
            self._run_calls()  # no leader to do it
        return closed.wait(wait) if wait > 0 else closed.is_set()

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._spawn_leader()

    def close(self) -> None:
        """Close every listener and every unfinished handshake; returns at once (the
        leader does the closing; ``wait_closed`` waits for it)."""
        self._call(self._stop)
        if not self._started:  # no leader to do it
            self._run_calls()
            self._close_everything()

    def wait_closed(self, timeout: float) -> bool:
        return self._closed.wait(timeout)

    def parked_count(self) -> int:
        return len(self._parked)

    def _call(self, fn: Callable[[], None]) -> None:
        self._calls.append(fn)
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake is pending anyway) or already closed

    # -- the leader -----------------------------------------------------------------------
    def _spawn_leader(self) -> bool:
        try:
            self._workers.spawn_steps(f"{self.name}-select", self._lead())
            return True
        except RuntimeError:
            log.error("%s: cannot start a thread to wait for connections", self.name)
            return False

    def _lead(self) -> TaskSteps[None]:
        """Wait in the selector until handshakes complete; hand the role on, serve one.
        (Steps: the connection it serves may park its reader, and this task with it.)"""
        while True:
            ready: List[Handoff] = []
            while not ready:
                if not self._poll(ready):
                    return
            if self._spawn_leader():
                break
            for handoff in ready:
                handoff.drop()  # no thread can be had: keep the ports served, not these
        mine = ready.pop()
        for handoff in ready:
            self._hand_to_worker(handoff)
        yield from mine.serve_steps()

    def _hand_to_worker(self, handoff: Handoff) -> None:
        try:
            self._workers.spawn_steps(f"{self.name}-serve", handoff.serve_steps())
        except RuntimeError:
            log.error("%s: cannot start a thread; dropping a connection", self.name)
            handoff.drop()

    def _poll(self, ready: List[Handoff]) -> bool:
        """One round: run queued calls, wait, handle events and deadlines. False once closed."""
        self._run_calls()
        if self._stopping:
            self._close_everything()
            return False
        for key, _ in outside_slot(self._selector.select, self._wait_time()):
            target = key.data
            if target is None:
                self._drain_wakes()
            elif isinstance(target, _Listener):
                self._accept(target, ready)
            else:
                self._advance(target, ready, None)
        self._expire(ready)
        return True

    def _run_calls(self) -> None:
        while self._calls:
            self._calls.popleft()()

    def _drain_wakes(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _wait_time(self) -> float:
        if self._calls:
            return 0.0
        if not self._deadlines:
            return MAX_SELECT_WAIT
        return min(max(self._deadlines[0][0] - time.monotonic(), 0.0), MAX_SELECT_WAIT)

    # -- listeners ---------------------------------------------------------------------
    def _register_listener(self, listener: _Listener) -> None:
        if self._stopping:
            return self._close_listener_now(listener)
        self._listeners[listener.sock] = listener
        self._selector.register(listener.sock, selectors.EVENT_READ, listener)

    def _close_listener(self, sock: socket.socket) -> None:
        listener = self._listeners.pop(sock, None)
        if listener is not None:
            self._unregister(sock)
            self._close_listener_now(listener)

    @staticmethod
    def _close_listener_now(listener: _Listener) -> None:
        listener.sock.close()
        listener.cleanup()

    def _accept(self, listener: _Listener, ready: List[Handoff]) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = listener.sock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                return self._accept_failed(listener, e)
            sock.setblocking(False)
            steps = listener.start(sock)
            if steps is not None:
                self._park(_Parked(sock, steps), ready)

    def _accept_failed(self, listener: _Listener, e: OSError) -> None:
        if e.errno in _FD_EXHAUSTED and self._parked:
            shed = list(itertools.islice(self._parked, SHED_BATCH))
            log.warning("%s: %s: out of file descriptors; closing the %d oldest unfinished "
                        "handshake(s)", self.name, listener.name, len(shed))
            for parked in shed:
                self._advance(parked, [], TransportError("shed: the process is out of "
                                                         "file descriptors"))
            return
        log.warning("%s: accept failed (%s); pausing for %.1f s", listener.name,
                    e.strerror or e, ACCEPT_BACKOFF)
        self._unregister(listener.sock)
        self._at(time.monotonic() + ACCEPT_BACKOFF, lambda: self._resume(listener))

    def _resume(self, listener: _Listener) -> None:
        if self._listeners.get(listener.sock) is listener:
            self._selector.register(listener.sock, selectors.EVENT_READ, listener)

    # -- parked handshakes -------------------------------------------------------------
    def _park(self, parked: _Parked, ready: List[Handoff]) -> None:
        self._parked[parked] = None
        self._advance(parked, ready, None)  # the first bytes may already be here

    def _advance(self, parked: _Parked, ready: List[Handoff],
                 error: Optional[BaseException]) -> None:
        """Resume a handshake (or throw ``error`` into it) until it waits or ends."""
        try:
            if error is None:
                deadline = parked.steps.send(None)
            else:
                deadline = parked.steps.throw(error)
        except StopIteration as done:
            self._unpark(parked)
            if done.value is not None:
                with contextlib.suppress(OSError):  # closed already: serve() will find out
                    parked.sock.setblocking(True)  # from here on a thread waits, as ever
                ready.append(done.value)
            return
        except Exception:  # a bug in a handshake: this connection ends, the rest go on
            log.exception("%s: handshake step failed", self.name)
            self._unpark(parked)
            parked.sock.close()
            return
        self._wait_for(parked, deadline)

    def _wait_for(self, parked: _Parked, deadline: float) -> None:
        if not parked.deadline:
            self._selector.register(parked.sock, selectors.EVENT_READ, parked)
        if deadline != parked.deadline:
            parked.deadline = deadline
            self._at(deadline, parked)

    def _unpark(self, parked: _Parked) -> None:
        del self._parked[parked]
        if parked.deadline:
            self._unregister(parked.fd)
            parked.deadline = 0.0

    def _unregister(self, sock) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass  # not registered (a paused listener)

    def _at(self, when: float, what: "_Due") -> None:
        """File a deadline (a parked handshake) or a timed call (a callable)."""
        heapq.heappush(self._deadlines, (when, next(self._seq), what))

    def _expire(self, ready: List[Handoff]) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            when, _, what = heapq.heappop(self._deadlines)
            if not isinstance(what, _Parked):
                what()
            elif what in self._parked and what.deadline == when:  # else stale
                self._advance(what, ready, HandshakeTimeout("handshake timed out"))

    # -- closing -----------------------------------------------------------------------
    def _stop(self) -> None:
        self._stopping = True

    def _close_everything(self) -> None:
        for sock in list(self._listeners):
            self._close_listener(sock)
        for parked in list(self._parked):
            self._unpark(parked)
            parked.steps.close()  # its cleanup closes the connection
            parked.sock.close()
        self._deadlines.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        self._closed.set()
