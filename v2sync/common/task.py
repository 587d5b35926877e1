"""Tracked threads and the relay's thread pair (v2ray ``common/task/task.go``).

Every thread v2sync starts is named, belongs to a ``ThreadGroup`` and is joined on shutdown:
a thread nobody joins is a leak in a thread-per-connection server.

Starting a thread costs ~90 µs and each new connection needs several, so a group keeps a
few finished workers parked for ``IDLE_TIMEOUT`` seconds and hands them the next task.
It is still one thread per task while the task runs; parked workers are bounded by
``MAX_IDLE`` and expire on their own, so an idle server returns to its baseline.
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
# A worker popped from the idle list gets its task within microseconds; this only bounds
# the wait should the giver die in between.
HANDOVER_TIMEOUT = 5.0


def set_thread_stack_size() -> None:
    try:
        threading.stack_size(THREAD_STACK_SIZE)
    except (ValueError, RuntimeError):  # platform refuses: keep its default
        log.debug("could not set thread stack size")


class TaskHandle:
    """What ``spawn`` returns: join a task (not the thread, which may live on in the pool)."""

    __slots__ = ("name", "_done")

    def __init__(self, name: str):
        self.name = name
        self._done = threading.Event()

    def join(self, timeout: Optional[float] = None) -> None:
        self._done.wait(timeout)

    def is_alive(self) -> bool:
        return not self._done.is_set()


Task = Tuple[TaskHandle, Callable[[], None]]


class _Parked:
    """A worker waiting in the idle list for its next task (None = exit)."""

    __slots__ = ("_event", "_task")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._task: Optional[Task] = None

    def give(self, task: Optional[Task]) -> None:
        self._task = task
        self._event.set()

    def wait(self, timeout: float) -> Tuple[bool, Optional[Task]]:
        return self._event.wait(timeout), self._task


class ThreadGroup:
    """Runs named tasks one per thread, reuses finished threads, joins them all on shutdown."""

    def __init__(self, name: str, max_idle: int = MAX_IDLE, idle_timeout: float = IDLE_TIMEOUT):
        self.name = name
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._busy: Set[TaskHandle] = set()
        self._idle: List[_Parked] = []
        self._threads: Set[threading.Thread] = set()
        self._closed = False

    def spawn(self, name: str, target: Callable[[], None]) -> TaskHandle:
        handle = TaskHandle(name)
        with self._lock:
            self._busy.add(handle)
            parked = self._idle.pop() if self._idle else None
        if parked is not None:
            parked.give((handle, target))
            return handle
        thread = threading.Thread(target=self._run, args=((handle, target),), name=name,
                                  daemon=True)
        with self._lock:
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:  # "can't start new thread": out of memory or limits
            with self._lock:
                self._threads.discard(thread)
                self._busy.discard(handle)
            raise
        return handle

    def _run(self, task: Optional[Task]) -> None:
        me = threading.current_thread()
        try:
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
            handle._done.set()

    def _park(self) -> Optional[Task]:
        parked = _Parked()
        with self._lock:
            if self._closed or len(self._idle) >= self.max_idle:
                return None
            self._idle.append(parked)
        got, task = parked.wait(self.idle_timeout)
        if got:
            return task
        with self._lock:
            if parked in self._idle:  # nobody claimed us: expire
                self._idle.remove(parked)
                return None
        return parked.wait(HANDOVER_TIMEOUT)[1]  # claimed just now: the task is on its way

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
        for worker in parked:
            worker.give(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():
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
