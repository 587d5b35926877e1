"""Tracked threads and the relay's thread pair (v2ray ``common/task/task.go``).

Every thread v2sync starts is named, belongs to a ``ThreadGroup`` and is joined on shutdown:
a thread nobody joins is a leak in a thread-per-connection server.

Starting a thread costs ~90 µs and each new connection needs several, so a group keeps a
few finished workers parked for ``IDLE_TIMEOUT`` seconds and hands them the next task.
Because connections linger (v2ray's uplinkOnly/downlinkOnly), a busy server drains that
pool; a *nursery* thread then tops it up to ``min_spare`` off the critical path, so a new
connection gets a ready thread instead of waiting for ``Thread.start()``. It is still one
thread per task while the task runs; parked workers above ``min_spare`` expire on their
own, so an idle server returns to its baseline.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List, Optional, Set, Tuple

log = logging.getLogger(__name__)

# Small stacks let a 32-bit Raspberry Pi (3 GiB of address space) hold 1,000 connections of
# four threads each; v2sync's deepest call chains are a few dozen frames.
THREAD_STACK_SIZE = 256 * 1024
MAX_IDLE = 32
IDLE_TIMEOUT = 2.0
# Nursery wake-up bound, so shutdown is noticed even without a spawn to signal it.
NURSERY_POLL = 1.0
# A worker popped from the idle list gets its task within microseconds; this only bounds
# the wait should the giver die in between.
HANDOVER_TIMEOUT = 5.0


def set_thread_stack_size() -> None:
    try:
        threading.stack_size(THREAD_STACK_SIZE)
    except (ValueError, RuntimeError):  # platform refuses: keep its default
        log.debug("could not set thread stack size")


class TaskHandle:
    """What ``spawn`` returns: join a task (not the thread, which may live on in the pool).

    A bare lock, held while the task runs, is the cheapest joinable flag: an ``Event`` costs a
    Condition and a deque, and every held connection owns four of these.
    """

    __slots__ = ("name", "_running")

    def __init__(self, name: str):
        self.name = name
        self._running = threading.Lock()
        self._running.acquire()

    def _finish(self) -> None:
        self._running.release()

    def join(self, timeout: Optional[float] = None) -> None:
        if self._running.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._running.release()

    def is_alive(self) -> bool:
        return self._running.locked()


Task = Tuple[TaskHandle, Callable[[], None]]


class _Parked:
    """A worker waiting in the idle list for its next task (None = exit).

    ``give`` is called at most once, so a bare lock held until then is the whole
    hand-over: one futex wake, where an ``Event`` adds a Condition and a waiter list.
    """

    __slots__ = ("_ready", "_task")

    def __init__(self) -> None:
        self._ready = threading.Lock()
        self._ready.acquire()
        self._task: Optional[Task] = None

    def give(self, task: Optional[Task]) -> None:
        self._task = task
        self._ready.release()

    def wait(self, timeout: float) -> Tuple[bool, Optional[Task]]:
        return self._ready.acquire(timeout=timeout), self._task


class ThreadGroup:
    """Runs named tasks one per thread, reuses finished threads, joins them all on shutdown."""

    def __init__(self, name: str, max_idle: int = MAX_IDLE, idle_timeout: float = IDLE_TIMEOUT,
                 min_spare: int = 0):
        self.name = name
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.min_spare = min(min_spare, max_idle)
        self._lock = threading.Lock()
        self._busy: Set[TaskHandle] = set()
        self._idle: List[_Parked] = []
        self._threads: Set[threading.Thread] = set()
        self._closed = False
        self._low = threading.Condition(self._lock)  # nursery: "spares ran low"
        self._nursery: Optional[threading.Thread] = None

    def start_nursery(self) -> None:
        """Keep ``min_spare`` parked workers ready from now on (until ``shutdown``)."""
        if self.min_spare and self._nursery is None:
            self._nursery = threading.Thread(target=self._nurse, name=f"{self.name}-nursery",
                                             daemon=True)
            self._nursery.start()

    def _nurse(self) -> None:
        while True:
            with self._lock:
                while not self._closed and len(self._idle) >= self.min_spare:
                    self._low.wait(NURSERY_POLL)
                if self._closed:
                    return
                missing = self.min_spare - len(self._idle)
            for _ in range(missing):
                if self._closed:
                    return
                self._start_thread(None)
            time.sleep(0)  # let the new workers park before counting again

    def spawn(self, name: str, target: Callable[[], None]) -> TaskHandle:
        handle = TaskHandle(name)
        with self._lock:
            self._busy.add(handle)
            parked = self._idle.pop() if self._idle else None
            if len(self._idle) < self.min_spare:
                self._low.notify()
        if parked is not None:
            parked.give((handle, target))
            return handle
        try:
            self._start_thread((handle, target))
        except RuntimeError:  # "can't start new thread": out of memory or limits
            with self._lock:
                self._busy.discard(handle)
            raise
        return handle

    def _start_thread(self, task: Optional[Task]) -> None:
        """A new worker: runs ``task``, or parks straight away when it is None."""
        name = task[0].name if task else f"{self.name}-spare"
        thread = threading.Thread(target=self._run, args=(task,), name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:
            with self._lock:
                self._threads.discard(thread)
            raise

    def _run(self, task: Optional[Task]) -> None:
        me = threading.current_thread()
        try:
            if task is None:
                task = self._park()
            while task is not None:
                self._execute(me, *task)
                task = self._park()
        finally:
            with self._lock:
                self._threads.discard(me)

    def _execute(self, me: threading.Thread, handle: TaskHandle, fn: Callable[[], None]) -> None:
        me.name = handle.name
        try:
            fn()
        except Exception:  # the one broad catch per thread entry point
            log.exception("thread %s failed", handle.name)
        finally:
            with self._lock:
                self._busy.discard(handle)
            handle._finish()

    def _park(self) -> Optional[Task]:
        parked = _Parked()
        with self._lock:
            if self._closed or len(self._idle) >= self.max_idle:
                return None
            self._idle.append(parked)
        while True:
            got, task = parked.wait(self.idle_timeout)
            if got:
                return task
            with self._lock:
                if parked not in self._idle:
                    break  # claimed just now: the task is on its way
                if self._closed or len(self._idle) > self.min_spare:
                    self._idle.remove(parked)  # nobody needs us: expire
                    return None
        return parked.wait(HANDOVER_TIMEOUT)[1]

    def live(self) -> List[TaskHandle]:
        """Tasks still running."""
        with self._lock:
            return list(self._busy)

    def join(self, timeout: float) -> bool:
        """Wait for every running task within ``timeout`` seconds; True if none is left."""
        deadline = time.monotonic() + timeout
        current = threading.current_thread().name
        for handle in self.live():
            if handle.name != current:
                handle.join(max(deadline - time.monotonic(), 0.0))
        return not [h for h in self.live() if h.name != current]

    def shutdown(self, timeout: float) -> bool:
        """Release parked workers and join every thread; True if all ended in time."""
        with self._lock:
            self._closed = True
            parked, self._idle = self._idle, []
            threads = list(self._threads)
            self._low.notify_all()
        if self._nursery is not None:
            threads.append(self._nursery)
        for worker in parked:
            worker.give(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            # A thread registered but not yet started (the nursery races us) finds the group
            # closed as soon as it runs, and exits; it cannot be joined before it starts.
            if thread is not threading.current_thread() and thread.ident is not None:
                thread.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            return not (self._threads - {threading.current_thread()})


def run_pair(
    group: ThreadGroup,
    name: str,
    background: Callable[[], None],
    foreground: Callable[[], None],
    on_error: Callable[[BaseException], None],
    join_timeout: float,
) -> Optional[BaseException]:
    """Run ``background`` in a pooled thread and ``foreground`` here; join within ``join_timeout``.

    The first exception of either side calls ``on_error`` (which must unblock the other side,
    e.g. by interrupting the link and aborting the connection) and is returned.
    """
    errors: List[BaseException] = []
    lock = threading.Lock()

    def guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            with lock:
                first = not errors
                errors.append(exc)
            if first:
                on_error(exc)

    task = group.spawn(name, lambda: guarded(background))
    guarded(foreground)
    task.join(join_timeout)
    if task.is_alive():
        on_error(TimeoutError(f"{name} did not finish in {join_timeout}s"))
        task.join(join_timeout)
    return errors[0] if errors else None
