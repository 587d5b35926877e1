"""Tracked threads and the relay's thread pair (v2ray ``common/task/task.go``).

Every thread v2sync starts is named, belongs to a ``ThreadGroup`` and is joined on shutdown:
a thread nobody joins is a leak in a thread-per-connection server.

Starting a thread costs ~90 µs and each new connection needs several, so a group keeps
up to ``MAX_IDLE`` finished workers parked for ``IDLE_TIMEOUT`` seconds and hands them the
next task; when none is parked, ``spawn`` starts a thread. It is still one thread per task
while the task runs, and parked workers expire on their own, so an idle server returns to
its baseline.

There is deliberately no background "nursery" keeping spares ready: measured on the
latency benchmark (sequential connect + echo, 2 cores), a thread creating spares competes
for the GIL with the connections it is meant to serve, and p50 was ~12% worse (1.13 ms
against 0.97 ms) than starting a thread when one is needed.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List, Optional, Set, Tuple

from v2sync.common.errors import detached

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
        try:
            self._start_thread((handle, target))
        except RuntimeError:  # "can't start new thread": out of memory or limits
            with self._lock:
                self._busy.discard(handle)
            raise
        return handle

    def _start_thread(self, task: Task) -> None:
        """A new worker: runs ``task``, then parks for the next one."""
        thread = threading.Thread(target=self._run, args=(task,), name=task[0].name, daemon=True)
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
                self._idle.remove(parked)  # nobody needed us in time: expire
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
        for worker in parked:
            worker.give(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            # A thread registered but not yet started (a spawn racing us) finds the group
            # closed once its task is done, and exits; it cannot be joined before it starts.
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
    e.g. by interrupting the link and aborting the connection) and is returned without its
    traceback (``detached``), so keeping it makes no reference cycle.
    """
    errors: List[BaseException] = []
    lock = threading.Lock()

    def guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            with lock:
                first = not errors
                errors.append(detached(exc))
            if first:
                on_error(exc)

    task = group.spawn(name, lambda: guarded(background))
    guarded(foreground)
    task.join(join_timeout)
    if task.is_alive():
        on_error(TimeoutError(f"{name} did not finish in {join_timeout}s"))
        task.join(join_timeout)
    return errors[0] if errors else None
