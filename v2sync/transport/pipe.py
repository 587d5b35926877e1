"""A bounded byte pipe with V2Ray's semantics (v2ray ``transport/pipe/impl.go``).

- ``write(data)`` blocks while the pipe holds more than ``limit`` bytes (v2ray's
  ``pipeOption.isFull``: ``curSize > limit``). A write that is let in is taken whole, so one
  chunk may overshoot and a large write never deadlocks against a small limit; ``limit`` 0
  hands over one chunk at a time and a negative ``limit`` never blocks (``WithoutSizeLimit``).
- ``wait_room(want, timeout)`` blocks until ``want`` bytes fit under the limit (or the pipe
  is empty) and returns how many bytes the pipe may still take without passing its limit.
  A relay sizes its next socket read by it (``transport.copy.adaptive_reads``), so bytes
  wait in the kernel rather than in a chunk a blocked writer holds on to.
- ``close()`` is a graceful EOF: the reader drains what is queued, then gets ``EOF``.
- ``interrupt()`` aborts: the reader and any blocked writer raise ``PipeInterrupted`` at once,
  and queued data is dropped.
- ``read(timeout)`` returns bytes, or the ``EOF`` sentinel (never an overloaded ``b""``), and
  raises ``ReadTimeout`` when nothing arrived in time; ``read_all(timeout)`` returns every
  chunk queued (v2ray's ``ReadMultiBuffer``).
- ``read_all_or_park(wait, wake)`` is ``read_all`` for a reader that would rather give its
  thread back than wait long: after ``wait`` seconds with nothing to read it leaves ``wake``
  with the pipe and returns ``PARKED``; the next write, close or interrupt calls ``wake``
  once (outside the pipe's lock), and the reader reads again on whatever thread that gives.

Storage is a ``queue.Queue`` whose size is counted in bytes rather than items, so the queue's
own mutex and conditions give us the blocking behaviour; close and interrupt just set a flag
under that mutex and wake everyone.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
import enum
from collections import deque
from typing import Callable, Deque, Final, List, Optional, Union

from v2sync.common.errors import PipeClosed, PipeInterrupted, TransportError
from v2sync.common.task import PARKED, Wait, Waker, _ParkedType, outside_slot


class _EOFType(enum.Enum):
    """A one-member enum: a singleton, so ``is EOF`` is the only test anyone needs, and
    one type checkers narrow on (``chunk is EOF`` leaves ``bytes`` in the other branch)."""

    EOF = "EOF"

    def __repr__(self) -> str:
        return "EOF"

    def __bool__(self) -> bool:
        return False


EOF: Final = _EOFType.EOF
Chunk = Union[bytes, _EOFType]

DEFAULT_LIMIT = 512 * 1024  # features/policy/policy.go: defaultBufferSize on amd64
UNLIMITED = -1
# What ``wait_room`` answers for a pipe without a limit.
UNLIMITED_ROOM = sys.maxsize


class ReadTimeout(TransportError):
    """No data arrived within the read timeout."""


class _ByteQueue(queue.Queue):
    """``queue.Queue`` whose ``qsize`` is the number of bytes held."""

    def __init__(self, maxsize: int):
        # queue.Queue.__init__ would build three Conditions; a pipe needs one. Every
        # connection makes two pipes, so they are assembled here instead:
        # - task_done()/join() are never used on a pipe: no ``all_tasks_done`` (~700 bytes);
        # - one writer and one reader, never both waiting (the writer waits only while the
        #   pipe holds something: it is full, or short of the room ``wait_room`` wants; the
        #   reader only while it is empty), so one Condition serves as "not full" and "not
        #   empty" (~800 bytes).
        self.maxsize = maxsize
        self._init(maxsize)
        self.mutex = threading.Lock()
        self.not_empty = threading.Condition(self.mutex)
        self.not_full = self.not_empty
        self.all_tasks_done = None  # type: ignore[assignment]  # task_done() is not used
        self.unfinished_tasks = 0

    def wake(self) -> None:
        """Wake a waiting reader or writer, if any; call with ``mutex`` held.

        Condition.notify() first proves the caller owns the lock (two lock operations);
        most writes find nobody waiting, so look at the waiter list first.
        """
        if self.not_empty._waiters:  # type: ignore[attr-defined]  # CPython's, read only
            self.not_empty.notify()

    def _init(self, maxsize: int) -> None:
        self.queue: Deque[bytes] = deque()
        self.nbytes = 0

    def _qsize(self) -> int:
        return self.nbytes

    def _put(self, item: bytes) -> None:
        self.queue.append(item)
        self.nbytes += len(item)

    def _get(self) -> bytes:
        item = self.queue.popleft()
        self.nbytes -= len(item)
        return item


class Pipe:
    """One direction of a link. Thread-safe for one writer and one reader at a time."""

    def __init__(self, limit: int = DEFAULT_LIMIT, name: str = "pipe"):
        # The policy's bufferSize in bytes, as v2ray's pipe takes it (pipe.OptionsFromContext).
        self.limit = limit if limit >= 0 else UNLIMITED
        self.name = name
        self._q = _ByteQueue(0)  # queue.Queue's own put() is never used: no item limit
        self._closed = False
        self._interrupted = False
        self._waker: Optional[Waker] = None  # a parked reader's, taken by the next event
        self._hooks: Optional[List[Callable[[], None]]] = None  # see on_interrupt

    # -- writer side -------------------------------------------------------------------
    def write(self, data: bytes, timeout: Optional[float] = None) -> None:
        """Queue ``data``; block while full. Raises PipeInterrupted / PipeClosed."""
        if not data:
            return
        q = self._q
        with q.mutex:  # the Condition's lock; its Python-level __enter__ costs a call
            if self._interrupted or self._closed or self._is_full():
                self._wait_writable(timeout)
            q._put(bytes(data))
            q.wake()
            waker = self._waker
            self._waker = None
        if waker is not None:
            waker()

    def wait_room(self, want: int = 0, timeout: Optional[float] = None) -> int:
        """Block until ``want`` more bytes fit under the limit, or the pipe is empty (so a
        ``want`` above the limit still gets its turn); return the room: how many bytes fit
        (``UNLIMITED_ROOM`` without a limit). ``want`` 0 waits as ``write`` does. Raises as
        ``write`` does."""
        q = self._q
        deadline = None if timeout is None else time.monotonic() + timeout
        with q.mutex:
            while True:
                self._check_writable()
                room = self._room()
                if room >= want or not q.nbytes:
                    return room
                outside_slot(q.not_full.wait, self._remaining(deadline))

    def try_write(self, data: bytes, slack: int = 0) -> bool:
        """Queue ``data`` only if there is room now (datagrams: drop rather than block);
        ``slack`` bytes past the limit count as room. An empty ``data`` is taken and
        dropped, as ``write`` drops it and 4.34's pipe drops an empty write: an empty
        datagram (a Shadowsocks packet with no payload) goes nowhere."""
        if not data:
            return True
        q = self._q
        with q.mutex:
            self._check_writable()
            if self._is_full(slack):
                return False
            q._put(bytes(data))
            q.wake()
            waker = self._take_waker()
        if waker is not None:
            waker()
        return True

    def unread(self, data: bytes) -> None:
        """Put bytes back at the front (sniffing replays what it read, unchanged)."""
        if not data:
            return
        q = self._q
        with q.mutex:
            if self._interrupted:
                raise PipeInterrupted(f"{self.name} interrupted")
            q.queue.appendleft(bytes(data))
            q.nbytes += len(data)
            q.wake()
            waker = self._take_waker()
        if waker is not None:
            waker()

    def close(self) -> None:
        """Graceful EOF: queued data is still delivered, then the reader sees ``EOF``."""
        with self._q.mutex:
            self._closed = True
            self._wake_all()
            waker = self._take_waker()
        if waker is not None:
            waker()

    def interrupt(self) -> None:
        """Abort both ends now; queued data is discarded. The interrupt hooks run, once."""
        with self._q.mutex:
            if self._interrupted:
                return  # a teardown reaches each pipe several times; the first one did it all
            self._interrupted = True
            self._q.queue.clear()
            self._q.nbytes = 0
            self._wake_all()
            waker = self._take_waker()
            hooks, self._hooks = self._hooks, None
        if waker is not None:
            waker()
        for hook in hooks or ():
            hook()

    def on_interrupt(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when the pipe is interrupted (at once if it was): how a relay that
        is not using the pipe just then (its upstream idle) hears that the other side
        failed. The hook runs without the pipe's lock and must not raise. Remove it when
        done (``remove_interrupt_hook``): it usually holds the link, a cycle otherwise."""
        with self._q.mutex:
            if not self._interrupted:
                self._hooks = (self._hooks or []) + [hook]
                return
        hook()

    def remove_interrupt_hook(self, hook: Callable[[], None]) -> None:
        with self._q.mutex:
            if self._hooks is not None and hook in self._hooks:
                self._hooks = [h for h in self._hooks if h is not hook] or None

    def _wake_all(self) -> None:
        """Wake every waiting reader and writer; call with the mutex held. As ``wake``:
        most pipes end with nobody waiting, and notify_all() first proves lock ownership."""
        if self._q.not_empty._waiters:  # type: ignore[attr-defined]  # not_full is the same
            self._q.not_empty.notify_all()

    def _take_waker(self) -> Optional[Waker]:
        """The parked reader's waker, once; call with the mutex held, call it without."""
        waker = self._waker
        self._waker = None
        return waker

    def _is_full(self, slack: int = 0) -> bool:
        return 0 <= self.limit and self.limit + slack < self._q.nbytes

    def _room(self) -> int:
        return UNLIMITED_ROOM if self.limit < 0 else self.limit - self._q.nbytes

    def _wait_writable(self, timeout: Optional[float]) -> None:
        """Wait, with the mutex held, until a write may go in; raise if it never may."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check_writable()
            if not self._is_full():
                return
            outside_slot(self._q.not_full.wait, self._remaining(deadline))

    def _remaining(self, deadline: Optional[float]) -> Optional[float]:
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReadTimeout(f"{self.name}: write timed out")
        return remaining

    def _check_writable(self) -> None:
        if self._interrupted:
            raise PipeInterrupted(f"{self.name} interrupted")
        if self._closed:
            raise PipeClosed(f"{self.name} closed")

    # -- reader side -------------------------------------------------------------------
    def read(self, timeout: Optional[float] = None) -> Chunk:
        """Return the next chunk, or ``EOF`` after close(); ``ReadTimeout`` if none in time."""
        q = self._q
        with q.mutex:
            if not (q.queue and not self._interrupted or self._wait_readable(timeout)):
                return EOF
            item = q._get()
            q.wake()
            return item

    def read_all(self, timeout: Optional[float] = None) -> Union[List[bytes], _EOFType]:
        """Every chunk queued now (at least one), or ``EOF`` after close(); as ``read``
        otherwise. v2ray's ``ReadMultiBuffer``: a writer that sends them in one gather call
        lets the pipe's room come back whole, so the next read fills it."""
        q = self._q
        with q.mutex:
            if not (q.queue and not self._interrupted or self._wait_readable(timeout)):
                return EOF
            return self._take_all()

    def read_all_or_park(self, wait: float,
                         wake: Waker) -> Union[List[bytes], _EOFType, _ParkedType]:
        """``read_all`` that waits at most ``wait`` seconds, then leaves ``wake`` for the
        next write, close or interrupt and returns ``PARKED``. Raises as ``read_all``."""
        q = self._q
        with q.mutex:
            try:
                if not (q.queue and not self._interrupted or self._wait_readable(wait)):
                    return EOF
            except ReadTimeout:
                self._waker = wake
                return PARKED
            return self._take_all()

    def when_readable(self, wake: Waker) -> None:
        """Call ``wake`` once the pipe has a chunk, its EOF or an interrupt: now if it has
        one, else from the next write, close or interrupt (``PipeReadable``)."""
        q = self._q
        with q.mutex:
            if not (q.queue or self._closed or self._interrupted):
                self._waker = wake
                return
        wake()

    def wait_readable(self) -> None:
        """Block until the pipe has a chunk, its EOF or an interrupt; reads nothing."""
        self.wait_readable_for(None)

    def wait_readable_for(self, timeout: Optional[float]) -> bool:
        """``wait_readable`` for at most ``timeout`` seconds; False if it passed first."""
        q = self._q
        with q.mutex:
            try:
                self._wait_readable(timeout)
            except PipeInterrupted:
                pass  # the next read raises it
            except ReadTimeout:
                return False
        return True

    def _take_all(self) -> List[bytes]:
        """Empty the queue; call with the mutex held."""
        q = self._q
        chunks = list(q.queue)
        q.queue.clear()
        q.nbytes = 0
        q.wake()
        return chunks

    def _wait_readable(self, timeout: Optional[float]) -> bool:
        """Wait, with the mutex held, for a chunk (True) or the EOF after close (False)."""
        q = self._q
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._interrupted:
                raise PipeInterrupted(f"{self.name} interrupted")
            if q.queue:
                return True
            if self._closed:
                return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ReadTimeout(f"{self.name}: no data within {timeout}s")
            outside_slot(q.not_empty.wait, remaining)

    def small_and_live(self, max_bytes: int) -> bool:
        """Holds at most ``max_bytes`` and was not interrupted (read without the lock: a
        hint for ``PipeDrain.ready_inline``, which the next read settles)."""
        return not self._interrupted and self._q.nbytes <= max_bytes

    @property
    def is_closed(self) -> bool:
        return self._closed or self._interrupted

    @property
    def is_interrupted(self) -> bool:
        """Ended by ``interrupt`` (a side failed), not by ``close``."""
        return self._interrupted

    @property
    def buffered(self) -> int:
        with self._q.mutex:
            return self._q.nbytes


class PipeReadable(Wait):
    """A task's wait for a pipe to have a chunk, its EOF or an interrupt: a reader that
    found it empty parks here without a thread (``transport.copy.read_all_steps``)."""

    __slots__ = ("pipe",)

    def __init__(self, pipe: Pipe):
        self.pipe = pipe

    def arm(self, wake: Waker) -> None:
        self.pipe.when_readable(wake)

    def block(self) -> None:
        self.pipe.wait_readable()


class CountingPipe(Pipe):
    """A pipe whose writes add to a counter (4.34's dispatcher wraps a user's pipes in a
    ``SizeStatWriter``): the bytes the writer hands over, counted once, however they are
    read or put back by sniffing (``unread``)."""

    def __init__(self, counter, limit: int = DEFAULT_LIMIT, name: str = "pipe"):
        super().__init__(limit, name)
        self._count = counter.add

    def write(self, data: bytes, timeout: Optional[float] = None) -> None:
        super().write(data, timeout)
        self._count(len(data))

    def try_write(self, data: bytes, slack: int = 0) -> bool:
        written = super().try_write(data, slack)
        if written:
            self._count(len(data))
        return written
