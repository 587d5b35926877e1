"""Inactivity timers (v2ray ``common/signal/timer.go``: ``CancelAfterInactivity``).

A proxied connection is torn down when neither direction moved a byte for ``connIdle``
seconds; once one direction has finished, the timeout shrinks to ``uplinkOnly`` or
``downlinkOnly``. Go runs one timer goroutine per connection. Here a thread per timer would
double the thread count, so one ``TimerWheel`` thread per Instance watches every
``ActivityTimer``. ``update()`` is on the relay hot path and only stores a timestamp; the
wheel re-checks lazily, so traffic costs no lock and no heap operation.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable, List, Optional, Tuple

log = logging.getLogger(__name__)

# The wheel never sleeps longer than this, so stop() and new short timers are noticed quickly.
MAX_WHEEL_SLEEP = 0.5
# Heap entries of finished timers are dropped lazily. A connection's connIdle entry (300 s)
# would otherwise outlive it by minutes: at 1,000 connections a second, hundreds of
# thousands of dead tuples. The heap is rebuilt without them whenever it has doubled since
# the last rebuild (and holds at least this many entries).
MIN_COMPACT = 1024


class ActivityTimer:
    """Calls ``on_expire`` once, when no ``update()`` happened for ``timeout`` seconds."""

    __slots__ = ("_wheel", "_on_expire", "timeout", "last", "done", "filed")

    def __init__(self, wheel: "TimerWheel", timeout: float, on_expire: Callable[[], None]):
        self._wheel = wheel
        self._on_expire = on_expire
        self.timeout = timeout
        self.last = time.monotonic()
        self.done = False
        self.filed: Optional[float] = None  # deadline of this timer's live heap entry
        wheel.schedule(self)

    def update(self) -> None:
        self.last = time.monotonic()

    def deadline(self) -> float:
        return self.last + self.timeout

    def set_timeout(self, timeout: float) -> None:
        """Change the timeout, counting from now (v2ray ``ActivityTimer.SetTimeout``)."""
        if self.done:
            return
        if timeout <= 0:
            self.fire()
            return
        self.timeout = timeout
        self.last = time.monotonic()
        self._wheel.schedule(self)

    def cancel(self) -> None:
        """Stop watching without firing (the connection ended normally)."""
        self.done = True

    def fire(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self._on_expire()
        except Exception:  # a failing callback must not kill the wheel thread
            log.exception("inactivity callback failed")


class TimerWheel:
    """One thread that expires every ActivityTimer of an Instance."""

    def __init__(self, name: str = "timer-wheel"):
        self._heap: List[Tuple[float, int, ActivityTimer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._compact_at = MIN_COMPACT
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._started:
            self._thread.join(timeout)

    def new_timer(self, timeout: float, on_expire: Callable[[], None]) -> ActivityTimer:
        return ActivityTimer(self, timeout, on_expire)

    def schedule(self, timer: ActivityTimer) -> None:
        with self._cond:
            deadline = timer.deadline()
            if timer.filed is not None and timer.filed <= deadline:
                return  # the entry already filed pops first and re-files the timer then
            self._push(deadline, timer)
            if len(self._heap) > self._compact_at:
                self._compact()
            if self._heap[0][2] is timer:
                self._cond.notify()

    def _push(self, deadline: float, timer: ActivityTimer) -> None:
        timer.filed = deadline  # any earlier-filed entry of this timer is now stale
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap
                      if not entry[2].done and entry[0] == entry[2].filed]
        heapq.heapify(self._heap)
        self._compact_at = max(MIN_COMPACT, 2 * len(self._heap))

    def __len__(self) -> int:
        with self._cond:
            return sum(1 for filed, _, t in self._heap if not t.done and filed == t.filed)

    def _run(self) -> None:
        while True:
            due = self._collect_due()
            if due is None:
                return
            for timer in due:
                timer.fire()

    def _collect_due(self) -> Optional[List[ActivityTimer]]:
        """Wait until something is due; return the due timers, or None once stopped."""
        with self._cond:
            while not self._stopped:
                due = self._pop_due(time.monotonic())
                if due:
                    return due
                wait = MAX_WHEEL_SLEEP
                if self._heap:
                    wait = min(wait, max(self._heap[0][0] - time.monotonic(), 0.0))
                self._cond.wait(wait)
            return None

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
