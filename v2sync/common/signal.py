"""Inactivity timers (v2ray ``common/signal/timer.go``: ``CancelAfterInactivity``).

A proxied connection is torn down when neither direction moved a byte for ``connIdle``
seconds; once one direction has finished, the timeout shrinks to ``uplinkOnly`` or
``downlinkOnly``. Go runs one timer goroutine per connection. Here a thread per timer would
double the thread count, so one ``TimerWheel`` thread per Instance watches every
``ActivityTimer``.

Nothing a relay thread calls takes a lock. v2ray's ``ActivityTimer.Update`` only marks the
timer updated and its checker looks at the mark on each tick; likewise:

- ``update()`` stores a timestamp. The wheel files a deadline that may be stale and, when it
  pops, re-files it if traffic has moved it since.
- ``new_timer()`` and ``set_timeout()`` store the timeout and time, then append the timer to
  a deque (appending is atomic under the GIL). Only the wheel thread drains the deque and
  touches the heap.

Measured (tools/massclose_probe.py, 2,000 held SOCKS -> freedom connections closed at once):
when ``set_timeout`` took the wheel's lock, ~3,800 relay threads queued on it and a fresh
request took 2-7.6 s to be answered.

Precision: a timer fires at its deadline, late only by the time the wheel thread waits for
the GIL. The wheel sleeps until its earliest deadline (at most ``MAX_WHEEL_SLEEP``) and
drains the deque whenever it wakes; a deadline that falls before that wake releases a
one-slot signal (a lock release never blocks), so a shortened timeout is not rounded up.
A timeout of 0 fires at once, in the caller's thread (``uplinkOnly: 0`` means no linger).
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from typing import Callable, Deque, List, Optional, Tuple

log = logging.getLogger(__name__)

# The wheel never sleeps longer than this, so a stop() it missed is noticed quickly.
MAX_WHEEL_SLEEP = 0.5
# Heap entries of finished timers are dropped lazily. A connection's connIdle entry (300 s)
# would otherwise outlive it by minutes: at 1,000 connections a second, hundreds of
# thousands of dead tuples. The heap is rebuilt without them whenever it has doubled since
# the last rebuild (and holds at least this many entries).
MIN_COMPACT = 1024


def nothing() -> None:
    """A cancelled timer's callback, and a marker timer's (one that only stands for
    activity: ``DefaultDispatcher._mark_live``)."""


class ActivityTimer:
    """Calls ``on_expire`` when no ``update()`` happened for ``timeout`` seconds.

    ``on_expire`` runs in the wheel's thread, or in the caller's for ``set_timeout(0)``; it
    is meant to be called once, but a timer that expires in the wheel just as
    ``set_timeout(0)`` fires it may call it twice, so it must be idempotent (an abort is).
    """

    __slots__ = ("_wheel", "_on_expire", "timeout", "last", "done", "filed")

    def __init__(self, wheel: "TimerWheel", timeout: float, on_expire: Callable[[], None]):
        self._wheel = wheel
        self._on_expire = on_expire
        self.timeout = timeout
        self.last = time.monotonic()
        self.done = False
        self.filed: Optional[float] = None  # deadline of this timer's live heap entry (wheel's)
        wheel.schedule(self)

    def update(self) -> None:
        self.last = time.monotonic()
        if self._wheel.expiring:  # shutdown: a busy relay aborts itself, in its own thread
            self.fire()

    def deadline(self) -> float:
        return self.last + self.timeout

    def set_timeout(self, timeout: float) -> None:
        """Change the timeout, counting from now (v2ray ``ActivityTimer.SetTimeout``)."""
        if self.done:
            return
        if timeout <= 0:
            self.fire()
            return
        # ``last`` first: should the wheel read the two in between, it sees a later deadline
        # than the old one (and re-files), never an earlier one that would fire too soon.
        self.last = time.monotonic()
        self.timeout = timeout
        self._wheel.schedule(self)

    def cancel(self) -> None:
        """Stop watching without firing (the connection ended normally). The callback is
        let go at once: the wheel drops a cancelled timer's entry only when it pops or the
        heap is compacted, and the callback (an abort closing over a connection's sockets
        and pipes) would live as long."""
        self.done = True
        self._on_expire = nothing

    def fire(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self._on_expire()
        except Exception:  # a failing callback must not kill the wheel thread
            log.exception("inactivity callback failed")


class TimerWheel:
    """One thread that expires every ActivityTimer of an Instance.

    The heap and each timer's ``filed`` belong to the wheel thread alone; other threads
    only append to ``_incoming`` and release ``_wake``.
    """

    def __init__(self, name: str = "timer-wheel"):
        self._heap: List[Tuple[float, int, ActivityTimer]] = []
        self._seq = itertools.count()
        self._incoming: Deque[ActivityTimer] = collections.deque()
        # Held while no wake-up is pending; released (never waited on) to wake the wheel.
        self._wake = threading.Lock()
        self._wake.acquire()
        # When the wheel will next drain ``_incoming``; only an earlier deadline wakes it.
        self._next_wake = float("inf")
        self._stopped = False
        self.expiring = False  # shutdown: every timer fires now, every new one at once
        self._compact_at = MIN_COMPACT
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopped = True
        self._signal()
        if self._started:
            self._thread.join(timeout)

    def expire_all(self) -> None:
        """Fire every live timer now, and from now on every new one at once.

        Shutdown's abort, after the grace: a timer's ``on_expire`` aborts its relay, both
        its sockets and its pipes, so this reaches every relay of every protocol, inbound
        and outbound alike (interrupting a link wakes its pipes, not a thread in recv).
        A relay moving bytes fires its own timer at its next ``update()``, in its own
        thread; the wheel's thread fires the rest (it alone touches the heap). With 2,000
        busy connections, one thread shutting every socket down gave the GIL away at each
        shutdown() to ~8,000 busy threads: 0.4-28 s.
        """
        self.expiring = True
        self._signal()

    def last_activity(self) -> float:
        """When a live timer last saw traffic, or was made; -inf when none is live.

        For shutdown's grace, from any thread: copying the heap and the deque is atomic
        under the GIL, and a stale entry only repeats a timer."""
        timers = [entry[2] for entry in list(self._heap)] + list(self._incoming)
        return max((timer.last for timer in timers if not timer.done), default=float("-inf"))

    def new_timer(self, timeout: float, on_expire: Callable[[], None]) -> ActivityTimer:
        return ActivityTimer(self, timeout, on_expire)

    def schedule(self, timer: ActivityTimer) -> None:
        """Hand a new or changed deadline to the wheel: no lock, no heap operation."""
        self._incoming.append(timer)
        # Appended before reading ``_next_wake``: the wheel writes it before its last look
        # at the deque, so either it sees this timer there or we see its new wake time.
        if timer.deadline() < self._next_wake:
            self._signal()

    def _signal(self) -> None:
        if self._wake.locked():
            try:
                self._wake.release()
            except RuntimeError:
                pass  # another thread released it just now: a wake-up is pending

    def __len__(self) -> int:
        """Timers being watched (counts filed heap entries; call once the wheel has drained)."""
        return sum(1 for filed, _, t in list(self._heap) if not t.done and filed == t.filed)

    def pending(self) -> int:
        """Changes not yet drained by the wheel thread."""
        return len(self._incoming)

    def _run(self) -> None:
        while not self._stopped:
            self._drain()
            now = float("inf") if self.expiring else time.monotonic()
            for timer in self._pop_due(now):
                timer.fire()
            self._sleep()

    def _drain(self) -> None:
        incoming = self._incoming
        while incoming:
            timer = incoming.popleft()
            if timer.done:
                continue
            deadline = timer.deadline()
            if timer.filed is not None and timer.filed <= deadline:
                continue  # the entry already filed pops first and re-files the timer then
            self._push(deadline, timer)
        if len(self._heap) > self._compact_at:
            self._compact()

    def _sleep(self) -> None:
        wait = MAX_WHEEL_SLEEP
        if self._heap:
            wait = min(wait, max(self._heap[0][0] - time.monotonic(), 0.0))
        # Expiring: any new timer is due at once, so every schedule() wakes the wheel.
        self._next_wake = float("inf") if self.expiring else time.monotonic() + wait
        if self._incoming or self._stopped:
            return  # arrived after the drain: its setter may have read the old wake time
        self._wake.acquire(timeout=wait)

    def _push(self, deadline: float, timer: ActivityTimer) -> None:
        timer.filed = deadline  # any earlier-filed entry of this timer is now stale
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap
                      if not entry[2].done and entry[0] == entry[2].filed]
        heapq.heapify(self._heap)
        self._compact_at = max(MIN_COMPACT, 2 * len(self._heap))

    def _pop_due(self, now: float) -> List[ActivityTimer]:
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            filed, _, timer = heapq.heappop(heap)
            if timer.done or filed != timer.filed:
                continue  # finished, or superseded by an entry filed since
            deadline = timer.deadline()
            if deadline <= now:
                timer.filed = None
                due.append(timer)
            else:  # traffic moved the deadline since it was filed: re-file it
                self._push(deadline, timer)
        return due
