"""Tracked threads and the relay's thread pair (v2ray ``common/task/task.go``).

Every thread v2sync starts is named, belongs to a ``ThreadGroup`` and is joined on shutdown:
a thread nobody joins is a leak in a thread-per-connection server.

Starting a thread costs ~90 µs and each new connection needs several, so a group keeps
up to ``MAX_IDLE`` finished workers parked for ``IDLE_TIMEOUT`` seconds and hands them the
next task; when none is parked, ``spawn`` starts a thread. Workers finishing beyond that
park for a short, staggered while (``SURPLUS_LINGER``), so a burst of finished tasks
leaves as a trickle of thread exits. It is still one thread per task while the task runs,
and parked workers expire on their own, so an idle server returns to its baseline.

There is deliberately no background "nursery" keeping spares ready: measured on the
latency benchmark (sequential connect + echo, 2 cores), a thread creating spares competes
for the GIL with the connections it is meant to serve, and p50 was ~12% worse (1.13 ms
against 0.97 ms) than starting a thread when one is needed.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import (TYPE_CHECKING, Callable, Deque, Dict, Final, Generator, List, Optional, Set,
                    Tuple, TypeVar)

from v2sync.common.errors import detached

if TYPE_CHECKING:
    from v2sync.common.signal import ActivityTimer, TimerWheel

log = logging.getLogger(__name__)

# Small stacks let a 32-bit Raspberry Pi (3 GiB of address space) hold 1,000 connections of
# four threads each; v2sync's deepest call chains are a few dozen frames.
THREAD_STACK_SIZE = 256 * 1024
MAX_IDLE = 32
IDLE_TIMEOUT = 2.0
# Workers finishing beyond MAX_IDLE park too, briefly, and leave one after another: the
# k-th surplus worker waits SURPLUS_LINGER + k * SURPLUS_SPACING. When 2,000 connections
# close at once, 4,000 workers finish within a fraction of a second; leaving at once, their
# exits joined that burst and a fresh request waited ~230 ms (p99, tools/massclose_probe.py)
# against ~80 ms this way. Leaving all at one timeout only moved the burst (300-590 ms
# there); spaced, 8,000 leave over 2 s. A burst of new work meanwhile finds them parked.
SURPLUS_LINGER = 0.5
SURPLUS_SPACING = 0.00025
MAX_SURPLUS_SPREAD = 2.5  # so every surplus worker is gone within 3 s of parking
# A worker popped from the idle list gets its task within microseconds; this only bounds
# the wait should the giver die in between.
HANDOVER_TIMEOUT = 5.0
_GONE = object()
# ``spawn_steps(ahead=True)`` yields only once no step has queued for a slot for this long
# (``ThreadGroup._quiet``). Measured on ``bench.py massclose`` (2,000 connections closed at
# once, 20 fresh requests meanwhile): the requests' p99 read 16-47 ms in 9 of 15 runs with
# a yield whenever nothing was queued at that instant, and in 2 of 15 without any yield.
QUIET_AFTER = 1.0
# Steps that run at once in a group with a run limit (the Instance's connection workers)
# before further steps queue for a slot. Only one thread runs Python at a time, and each
# system call a relay makes hands the GIL on: with hundreds of threads wanting it, every
# hand-over wakes one (a futex wake and a context switch each). Measured with 1,000
# concurrent 64 KiB echoes through SOCKS -> freedom on 2 cores (tools/bench.py burst):
# one thread per ready step ran ~600 threads, 66 context switches and 0.85-1.2 ms of CPU
# per connection; 4 slots (with the crowded readers below): 60-210 threads at the peak of
# a first burst, 9-12 switches and 0.45-0.58 ms. 1, 2 and 4 slots measured alike, 8 ~15%
# slower. A step stops counting while it blocks (``leave_slot``: a socket read or write
# that waits, a dial, a pipe), so slow peers never take the slots.
RUN_SLOTS = 4
# A queued step waits at most this long for a slot: then it gets a thread of its own,
# whatever the count says (a step blocking where no ``leave_slot`` says so). Checked every
# QUEUE_TICK by a watcher thread that runs while steps have been queued lately.
QUEUE_MAX_WAIT = 0.002
QUEUE_TICK = 0.001
# The watcher leaves once nothing has been queued for this long. A quiet process has steps
# queue now and then (a connection's teardown overlapping the next one's start): it lingered
# for the group's idle timeout (2 s), 2,000 ticks each time, so a client serving one
# connection after another ticked all along, ~6 wake-ups of a thread wanting the GIL per
# connection. Starting a watcher costs about what 20 ticks do.
QUEUE_WATCH_LINGER = 0.02


class _ParkedType:
    """What a task returns to give its thread back without ending: something it waits on
    (a pipe) holds a waker that resumes it with ``ThreadGroup.resume``. One singleton."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PARKED"


PARKED: Final = _ParkedType()
Waker = Callable[[], None]
T = TypeVar("T")


class Wait:
    """What a task written as a generator of steps yields to give its thread back while it
    waits (``ThreadGroup.spawn_steps``): ``arm(wake)`` leaves ``wake`` with what it waits
    for, which calls it once; ``block()`` waits in the calling thread instead (``drive``)."""

    __slots__ = ()

    def arm(self, wake: Waker) -> None:
        raise NotImplementedError

    def block(self) -> None:
        raise NotImplementedError


# A task's steps: each ``yield`` is a wait that costs no thread; the return value is the
# task's result.
Steps = Generator[Wait, None, T]


class _GoOnElsewhere(Wait):
    """``HAND_ON``: a task started in its caller's thread (``ThreadGroup.start_here``)
    yields it once the work on its connection's path is done; the rest goes on in a pooled
    thread and the caller's thread returns to its own connection. ``HAND_AHEAD``: the rest
    is on the path too (a mux outbound's dispatch, once routed), so in a quiet group the
    caller lets go of the CPU for it, as ``spawn_steps(ahead=True)`` does. Run by
    ``drive``, or in a pooled thread already, there is nothing to hand on: see
    ``started_here``."""

    __slots__ = ("ahead",)

    def __init__(self, ahead: bool):
        self.ahead = ahead

    def arm(self, wake: Waker) -> None:
        wake()
        if self.ahead and _here.groups[-1]._quiet():
            yield_cpu()

    def block(self) -> None:
        pass


class Latch(Wait):
    """A one-time event a task waits for without a thread: ``set()`` wakes the waiter
    armed on it (at once if it is set already); ``block()`` waits in the calling thread.
    One waiter at a time. The waker is let go when it is called, so a task parked here
    and what its waker leads back to make no cycle once it is woken."""

    __slots__ = ("_lock", "_done", "_wake", "_event")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False
        self._wake: Optional[Waker] = None
        self._event = threading.Event()

    def set(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            wake, self._wake = self._wake, None
        self._event.set()
        if wake is not None:
            wake()

    def is_set(self) -> bool:
        return self._done

    def arm(self, wake: Waker) -> None:
        with self._lock:
            if not self._done:
                self._wake = wake
                return
        wake()

    def block(self) -> None:
        outside_slot(self._event.wait)


HAND_ON: Final = _GoOnElsewhere(False)
HAND_AHEAD: Final = _GoOnElsewhere(True)
# ``groups``: the groups whose ``start_here`` this thread is inside, innermost last.
_here = threading.local()


def started_here() -> bool:
    """Is this thread running the first step of a task for its caller (``start_here``)?
    Then a step that would wait on the caller, or for long, yields ``HAND_ON`` first."""
    return bool(getattr(_here, "groups", None))


def drive(steps: "Steps[T]") -> T:
    """Run ``steps`` to the end in this thread, blocking through each wait; returns what
    they return. A caller with no thread group to park in (the mux client's connections,
    tests) runs a step generator this way."""
    while True:
        try:
            wait = steps.send(None)
        except StopIteration as done:
            return done.value
        wait.block()


def at_once(fn: Callable[[], T]) -> "Steps[T]":
    """``fn`` as steps that never wait."""
    return fn()
    yield  # a generator: never reached


# A thread waiting for the GIL wakes every switch interval to ask its holder to let go
# (CPython's ceval_gil.h, take_gil). With thousands of waiters, as when 2,000 held
# connections close at once and their threads all wake, those wake-ups alone filled the
# CPU (futex calls, mostly system time) and a fresh request waited 1-10 s. Python's default
# is 5 ms; at 50 ms they are ten times rarer. Relay threads give the GIL up at every system
# call, so the interval only bounds a long stretch of pure Python (a big config, a first
# geosite load), whose neighbours then wait up to 50 ms instead of 5.
SWITCH_INTERVAL = 0.05
# Linux 6.16+ gives a multi-threaded process a private futex hash sized by its CPUs, not
# its threads: 16 buckets on 2 CPUs. Each held connection's threads wait on futexes (pipe
# conditions, the GIL), so at 2,000 connections a bucket's chain holds hundreds of waiters
# and every wake-up walks it. 16,384 slots (power of two; ~1 MiB of kernel memory) keep the
# chains short up to ~10,000 connections. Older kernels refuse the call: nothing changes.
FUTEX_HASH_SLOTS = 16384
PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS = 78, 1  # linux/prctl.h


def set_thread_stack_size() -> None:
    try:
        threading.stack_size(THREAD_STACK_SIZE)
    except (ValueError, RuntimeError):  # platform refuses: keep its default
        log.debug("could not set thread stack size")


_tuned = False


def tune_for_many_threads() -> None:
    """Process-wide settings for thousands of threads; call before starting them (once
    per process does it: later calls change nothing)."""
    global _tuned
    set_thread_stack_size()
    if _tuned:
        return
    _tuned = True
    if sys.getswitchinterval() < SWITCH_INTERVAL:
        sys.setswitchinterval(SWITCH_INTERVAL)
    widen_futex_hash()


def _libc(name: str) -> Optional[Callable[..., int]]:
    """A C library function through ctypes (errno kept for ``ctypes.get_errno``), or None
    where there is no such symbol. A foreign call lets go of the GIL while it runs."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


def widen_futex_hash(slots: int = FUTEX_HASH_SLOTS) -> bool:
    """Size this process's futex hash for its threads (Linux 6.16+); False if refused."""
    prctl = _libc("prctl") if sys.platform.startswith("linux") else None
    if prctl is None:
        return False
    done = prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, ctypes.c_ulong(slots),
                 ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0
    if not done:
        log.debug("futex hash not resized: errno %d", ctypes.get_errno())
    return done


class TaskHandle:
    """What ``spawn`` returns: join a task (not the thread, which may live on in the pool).

    A bare lock, held while the task runs, is the cheapest joinable flag: an ``Event`` costs a
    Condition and a deque, and every held connection owns four of these.
    """

    __slots__ = ("name", "paced", "_running")

    def __init__(self, name: str, paced: bool = False):
        self.name = name
        self.paced = paced  # its steps take run slots (ThreadGroup.run_slots)
        self._running = threading.Lock()
        self._running.acquire()

    def _finish(self) -> None:
        self._running.release()

    def join(self, timeout: Optional[float] = None) -> None:
        if self._running.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._running.release()

    def is_alive(self) -> bool:
        return self._running.locked()


Task = Tuple[TaskHandle, Callable[[], object]]


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


class _Worker(threading.local):
    """What a pooled worker thread knows about itself: the group whose paced step it runs
    now (None between steps and in any other task), and its thread id."""

    group: Optional["ThreadGroup"] = None
    ident = 0


_worker = _Worker()


def leave_slot() -> Optional["ThreadGroup"]:
    """This thread is about to wait for something outside Python (a socket read or write
    that may block, a dial, a pipe): a queued step may have its run slot meanwhile. Pass the
    result to ``take_slot`` when the wait is over. Outside a worker, nothing happens."""
    group = _worker.group  # set only while a paced step of a group with slots runs
    if group is not None:
        group._leave_slot(_worker.ident)
    return group


def take_slot(group: Optional["ThreadGroup"]) -> None:
    """Count this worker as running again, after ``leave_slot``. It may take the group over
    its limit for a while: a running step never waits for a slot, only a new one does."""
    if group is not None:
        group._active.add(_worker.ident)


def outside_slot(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` for a call that may block outside Python (a condition's wait, a
    resolver lookup, a dial), holding no run slot meanwhile."""
    group = leave_slot()
    try:
        return fn(*args)
    finally:
        take_slot(group)


def _find_sched_yield() -> Optional[Callable[[], object]]:
    """``sched_yield`` that lets go of the GIL: ``os.sched_yield`` does from Python 3.10 on.
    Before 3.10 it kept the GIL, so libc's is called through ctypes, which lets go of the
    GIL for any foreign call."""
    if sys.version_info >= (3, 10):
        return getattr(os, "sched_yield", None)
    return _libc("sched_yield")


_sched_yield = _find_sched_yield()


def yield_cpu() -> None:
    """Let go of the GIL and of this CPU, so that a thread just woken (a task just
    spawned) runs now, ahead of the caller's next Python code; with nothing else ready to
    run, it returns at once. Every thread of the process shares one CPU (``affinity``), and
    a woken thread would otherwise wait for the GIL until the caller blocks."""
    if _sched_yield is not None:
        _sched_yield()


def crowded() -> bool:
    """Are steps queued for a slot of this worker's group (or every slot taken)? A reader
    then parks at once rather than wait for its next bytes with a thread."""
    group = _worker.group
    return group is not None and group.crowded()


# Readers of quiet UDP sessions and pipes that wait a while in their thread before they
# park (``wait_lingering``), so a quick answer costs no hand-over: at most this many at once
# in the process. Their wait holds no run slot, so nothing else bounded them: a burst of new
# UDP sources (each session's first reads linger 50 ms) started threads as fast as sources
# came, 215-325 for 5,000 one-datagram sources (4.34: 7; found by a review).
MAX_LINGERING = 16
_lingering = threading.BoundedSemaphore(MAX_LINGERING)


def wait_lingering(wait: Callable[..., T], *args: object) -> Optional[T]:
    """``outside_slot(wait, *args)`` when fewer than MAX_LINGERING threads linger now;
    None at once otherwise (the caller parks instead)."""
    if not _lingering.acquire(blocking=False):
        return None
    try:
        return outside_slot(wait, *args)
    finally:
        _lingering.release()


class ThreadGroup:
    """Runs named tasks one per thread, reuses finished threads, joins them all on shutdown.

    No lock: every thread passes through here when its task ends, and when thousands end
    at once (a mass close) a lock here was a queue of ~1,300 threads (a stack sample of
    tools/massclose_probe.py). The group's state is three containers whose single
    operations (``set.add``/``discard``/``copy``, ``dict.popitem``/``pop``, item
    assignment) are atomic under the GIL, since their items hash and compare by identity
    in C; each decision that spans two operations is written so a race between them is
    harmless (see ``_park``).
    """

    def __init__(self, name: str, max_idle: int = MAX_IDLE, idle_timeout: float = IDLE_TIMEOUT,
                 run_slots: int = 0):
        self.name = name
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        # 0: every step runs at once (a thread each); else see RUN_SLOTS.
        self.run_slots = run_slots
        self._active: Set[int] = set()  # workers running a step, not blocked (their ids)
        self._queue: Deque[Tuple[float, Task]] = deque()  # (queued at, task), oldest first
        self._last_queued = float("-inf")  # when a step last had to queue for a slot
        self._watcher: Optional[_QueueWatcher] = None
        self._watcher_lock = threading.Lock()
        self._busy: Set[TaskHandle] = set()
        # Parked workers, oldest first; a dict for O(1) removal by a worker that expires.
        self._idle: Dict[_Parked, None] = {}
        self._threads: Set[threading.Thread] = set()
        self._closed = False
        # Per worker: ``after`` (a waker to call once the current step has returned) and
        # ``next`` (the task that waker resumed, which this worker then runs itself).
        self._tail = threading.local()

    def spawn(self, name: str, target: Callable[[], object]) -> TaskHandle:
        """Run ``target`` on a pooled thread; join the task with the handle returned.
        ``target`` may return ``PARKED``: see ``reserve``."""
        handle = self.reserve(name)
        try:
            self.resume(handle, target)
        except RuntimeError:  # "can't start new thread": out of memory or limits
            self.finish(handle)
            raise
        return handle

    def reserve(self, name: str, paced: bool = False) -> TaskHandle:
        """A task that has no thread yet: ``resume`` runs its steps. A step that returns
        ``PARKED`` gives its thread back and leaves the task running (joinable, counted
        live) until a later ``resume`` runs a step that returns anything else. A ``paced``
        task's steps take run slots; any other task's thread runs at once and counts for
        none (a blocking loop, such as a UDP session's or a mux reader's)."""
        handle = TaskHandle(name, paced)
        self._busy.add(handle)
        return handle

    def resume(self, handle: TaskHandle, step: Callable[[], object]) -> None:
        """Run ``step`` of ``handle``'s task on a parked worker, or a new thread.
        Raises RuntimeError when no thread can be started; the task stays live."""
        tail = self._tail
        if getattr(tail, "taking", False):  # a worker between tasks: it runs this itself
            tail.taking = False
            tail.next = (handle, step)
            return
        if handle.paced and self.crowded() and not self._closed:
            self._enqueue((handle, step))
            return
        self._dispatch((handle, step))

    def _dispatch(self, task: Task) -> None:
        """Run ``task`` on a parked worker, or a new thread."""
        try:
            parked: Optional[_Parked] = self._idle.popitem()[0]  # the latest: warm, lingers most
        except KeyError:
            parked = None
        if parked is not None:
            parked.give(task)
            return
        self._start_thread(task)

    def crowded(self) -> bool:
        return 0 < self.run_slots <= len(self._active) or bool(self._queue)

    def _enqueue(self, task: Task) -> None:
        now = self._last_queued = time.monotonic()
        self._queue.append((now, task))
        watcher = self._watcher
        if watcher is None or watcher.leaving:  # read after the append: see _leave
            self._watch()

    def _dequeue(self) -> Optional[Task]:
        try:
            return self._queue.popleft()[1]
        except IndexError:
            return None

    def _leave_slot(self, ident: int) -> None:
        self._active.discard(ident)
        if self._queue and len(self._active) < self.run_slots:
            task = self._dequeue()  # the slot just freed is its
            if task is not None:
                self._dispatch_or_drop(task)

    def _dispatch_or_drop(self, task: Task) -> None:
        """``_dispatch`` from a place that cannot raise: a step that no thread can run
        ends its task (a queued resume had nobody to tell)."""
        try:
            self._dispatch(task)
        except RuntimeError:
            log.error("%s: no thread to run it; ending it", task[0].name)
            self.finish(task[0])

    def _watch(self) -> None:
        """Make sure the watcher runs: it hands steps queued too long a thread."""
        with self._watcher_lock:  # the watcher decides to leave under it too
            if self._watcher is None or self._watcher.leaving:
                self._watcher = _QueueWatcher(self)

    def _overdue(self, now: float) -> None:
        """Give each step queued longer than QUEUE_MAX_WAIT a thread of its own."""
        queue = self._queue
        while queue and now - queue[0][0] > QUEUE_MAX_WAIT:
            task = self._dequeue()
            if task is not None:
                self._dispatch_or_drop(task)

    def spawn_steps(self, name: str, steps: "Steps[object]", ahead: bool = False) -> TaskHandle:
        """Run a task written as steps (``Wait``): each wait it yields gives its thread
        back; what it waits for resumes it on a pooled thread. A connection whose relay
        waits this way keeps no thread while idle. ``ahead``: the new task's first step
        runs before the caller goes on (``yield_cpu``) while the group is quiet
        (``_quiet``)."""
        handle = self.reserve(name, paced=True)
        task = _StepsTask(self, handle, steps)
        try:
            self.resume(handle, task.step)
        except RuntimeError:
            self.finish(handle)
            steps.close()
            raise
        if ahead and self._quiet():
            yield_cpu()
        return handle

    def start_here(self, name: str, steps: "Steps[object]") -> TaskHandle:
        """``spawn_steps``, except that in a quiet group (``_quiet``) the task's first step
        runs in this thread, up to its first wait (``HAND_ON``, ``HAND_AHEAD`` or any
        other), and only the rest in a pooled thread. For a caller that has nothing else
        to do meanwhile: the dispatch of an inbound's connection, whose outbound then dials
        and sends the client's first bytes with no thread hand-over in between. In a busy
        group the task is spawned as any other: dialling in every inbound's thread at once
        made ``bench.py burst`` 12-20% slower, and dialling there whenever a run slot was
        free still 5-8% (7 runs each)."""
        if not self._quiet():
            return self.spawn_steps(name, steps, ahead=True)
        handle = self.reserve(name, paced=True)
        task = _StepsTask(self, handle, steps)
        if not hasattr(_here, "groups"):
            _here.groups = []
        _here.groups.append(self)
        parked = False
        try:
            parked = task.step() is PARKED
        except Exception:  # as a pooled worker would: logged, and the caller goes on
            log.exception("task %s failed", name)
        finally:
            _here.groups.pop()
            if not parked:
                self.finish(handle)
        return handle

    def _quiet(self) -> bool:
        """No step of this group runs (the caller's aside), and none has had to queue for
        a slot for QUIET_AFTER seconds. Only then does ``spawn_steps(ahead=True)`` yield:
        a caller that gives the GIL away queues for it again, and behind a busy process's
        threads that can take several of the GIL's 5 ms switch intervals."""
        mine = 1 if _worker.group is self else 0
        return (len(self._active) <= mine and not self._queue
                and time.monotonic() - self._last_queued > QUIET_AFTER)

    def finish(self, handle: TaskHandle) -> None:
        """End a reserved or parked task that will not be resumed."""
        self._busy.discard(handle)
        handle._finish()

    def _start_thread(self, task: Task) -> None:
        """A new worker: runs ``task``, then parks for the next one."""
        # In a box the thread empties: ``Thread`` keeps its args until the thread exits.
        thread = threading.Thread(target=self._run, args=([task],), name=task[0].name,
                                  daemon=True)
        self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:
            self._threads.discard(thread)
            raise

    def after_step(self, wake: Waker) -> None:
        """Call ``wake`` once the current step of this worker has returned, and let this
        worker run the task it resumes, rather than handing that to another worker: one
        thread wake-up less. For a step's last act (a relay's side that ends resumes the
        join waiting for it). Outside a worker of this group, ``wake`` runs now."""
        tail = self._tail
        if not getattr(tail, "worker", False) or getattr(tail, "after", None) is not None:
            wake()
            return
        tail.after = wake

    def _run(self, box: List[Task]) -> None:
        me = threading.current_thread()
        task: Optional[Task] = box.pop()
        self._tail.worker = True
        _worker.ident = threading.get_ident()
        try:
            while task is not None:
                self._execute(me, *task)
                # Let go of the task before parking: a worker idle for seconds must not
                # keep what its last step closed over (a relay's sockets, pipes, frames).
                task = None
                task = self._take_next() or self._dequeue() or self._park()
        finally:
            self._threads.discard(me)

    def _take_next(self) -> Optional[Task]:
        """The task a waker left by ``after_step`` resumed, if any: this worker's next."""
        tail = self._tail
        wake, tail.after = getattr(tail, "after", None), None
        if wake is None:
            return None
        tail.taking, tail.next = True, None
        try:
            wake()
        except Exception:  # as a step's failure: logged, and the worker lives on
            log.exception("a waker failed")
        finally:
            tail.taking = False
        task, tail.next = tail.next, None
        return task

    def _execute(self, me: threading.Thread, handle: TaskHandle, fn: Callable[[], object]) -> None:
        me.name = handle.name
        parked = False
        paced = handle.paced and self.run_slots > 0
        if paced:
            _worker.group = self
            self._active.add(_worker.ident)
        try:
            parked = fn() is PARKED
        except Exception:  # the one broad catch per thread entry point
            log.exception("thread %s failed", handle.name)
        finally:
            if paced:
                self._active.discard(_worker.ident)
                _worker.group = None
            if not parked:  # a parked task is resumed, and finished, by another step
                self.finish(handle)

    def _park(self) -> Optional[Task]:
        """Wait in the idle list for the next task; None: leave (closed or expired)."""
        if self._closed:
            return None
        waiting = len(self._idle)
        timeout = self.idle_timeout if waiting < self.max_idle else self._surplus_wait(waiting)
        parked = _Parked()
        self._idle[parked] = None
        # shutdown() sets _closed, then empties the list: added after that, we see it
        # closed here; before, shutdown takes us and gives us None.
        if self._closed and self._leave_idle(parked):
            return None
        got, task = parked.wait(timeout)
        if got or not self._leave_idle(parked):
            # Claimed: by spawn (a task) or shutdown (None); if only just now, it is on its way.
            return task if got else parked.wait(HANDOVER_TIMEOUT)[1]
        return None  # nobody needed us in time: expire

    def _surplus_wait(self, waiting: int) -> float:
        return SURPLUS_LINGER + min((waiting - self.max_idle) * SURPLUS_SPACING, MAX_SURPLUS_SPREAD)

    def _leave_idle(self, parked: _Parked) -> bool:
        """Take ``parked`` off the idle list; False if someone took it first."""
        return self._idle.pop(parked, _GONE) is not _GONE

    def live(self) -> List[TaskHandle]:
        """Tasks still running."""
        return list(self._busy.copy())

    def join(self, timeout: float) -> bool:
        """Wait for every running task within ``timeout`` seconds; True if none is left."""
        deadline = time.monotonic() + timeout
        current = threading.current_thread().name
        for handle in self.live():
            left = deadline - time.monotonic()
            if left <= 0:
                break  # out of time: thousands of zero-timeout joins would only cost more
            if handle.name != current:
                handle.join(left)
        return not [h for h in self.live() if h.name != current]

    def shutdown(self, timeout: float) -> bool:
        """Release parked workers and join every thread; True if all ended in time."""
        self._closed = True
        while True:
            try:
                self._idle.popitem()[0].give(None)
            except KeyError:
                break
        while True:  # queued steps run now: each sees its connection aborted and ends
            task = self._dequeue()
            if task is None:
                break
            self._dispatch_or_drop(task)
        watcher = self._watcher
        if watcher is not None:
            watcher.stop()
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        # Again until none is left: a parked task woken meanwhile (its connection aborted
        # by the shutdown) runs its last step on a thread started after the first look.
        while time.monotonic() < deadline:
            # A thread registered but not yet started (a spawn racing us) finds the group
            # closed once its task is done, and exits; it cannot be joined before it starts.
            pending = [t for t in self._threads.copy() if t is not me and t.ident is not None]
            if not pending:
                break
            for thread in pending:
                thread.join(max(deadline - time.monotonic(), 0.0))
        return not (self._threads.copy() - {me})


class _QueueWatcher:
    """A thread that, every QUEUE_TICK, gives each step queued longer than QUEUE_MAX_WAIT a
    thread of its own (``ThreadGroup._overdue``). It polls rather than waits to be told:
    under load the queue fills and empties thousands of times a second, and an event set
    each time it filled cost a lock and a wake-up of this thread each time (3.7% of a
    burst's GIL-holding samples; the wall time moved less than the noise either way). It
    leaves once nothing has been queued for QUEUE_WATCH_LINGER; ``_watch`` starts another
    when steps queue again.

    Its tick is a bare lock's timed acquire, held until ``stop`` releases it: one call that
    waits outside the GIL, where ``Event.wait`` made a lock and ran a Condition's Python on
    every tick."""

    def __init__(self, group: ThreadGroup):
        self.group = group
        self.leaving = False
        self._stopped = False
        self._stop = threading.Lock()
        self._stop.acquire()
        self._thread = threading.Thread(target=self._run, name=f"{group.name}-queue",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.leaving = True
        if not self._stopped:  # one caller: the group's shutdown
            self._stopped = True
            self._stop.release()
        if self._thread is not threading.current_thread():
            self._thread.join(HANDOVER_TIMEOUT)

    def _run(self) -> None:
        group = self.group
        tick = self._stop.acquire
        last_queued = time.monotonic()
        while not tick(timeout=QUEUE_TICK):
            now = time.monotonic()
            if group._queue:
                last_queued = now
                group._overdue(now)
            elif now - last_queued > QUEUE_WATCH_LINGER and self._leave():
                return

    def _leave(self) -> bool:
        """Leave unless a step was queued meanwhile (its ``_watch`` saw us staying)."""
        with self.group._watcher_lock:
            self.leaving = True
            if self.group._queue:  # queued before it could see ``leaving``
                self.leaving = False
            return self.leaving


class _StepsTask:
    """``spawn_steps``'s task: one generator, resumed on a pooled thread after each wait.
    Holds no reference back from the generator, so a finished task leaves no cycle."""

    __slots__ = ("group", "handle", "steps")

    def __init__(self, group: ThreadGroup, handle: TaskHandle, steps: "Steps[object]"):
        self.group = group
        self.handle = handle
        self.steps = steps

    def step(self) -> object:
        try:
            wait = self.steps.send(None)
        except StopIteration:
            return None
        # Suspended now: the wake may come at once, from any thread, and resume it there.
        wait.arm(self.wake)
        return PARKED

    def wake(self) -> None:
        try:
            self.group.resume(self.handle, self.step)
        except RuntimeError:  # no thread to be had: end the task, its cleanup runs here
            log.error("%s: no thread to resume it; ending it", self.handle.name)
            self.steps.close()
            self.group.finish(self.handle)


class _Pair:
    """What the two sides of one ``run_pair`` share. An object of its own, not closures:
    a background step that must reach its waker, and a waker that must reach the step,
    written as two closures, make a reference cycle, and it held every relay object of the
    connection (sockets, pipes, timers) until the cyclic GC found them, 120 objects per
    connection; full collections over a busy server's heap then took ~130 ms each."""

    __slots__ = ("group", "task", "background", "on_error", "inline", "errors", "lock",
                 "timers", "done", "joiner", "join_timer")

    def __init__(self, group: ThreadGroup, background: Callable[[Waker], object],
                 on_error: Callable[[BaseException], None],
                 inline: Optional[Callable[[], bool]] = None,
                 timers: Optional["TimerWheel"] = None):
        self.group = group
        self.task: Optional[TaskHandle] = None
        self.background = background
        self.on_error = on_error
        self.inline = inline
        self.errors: List[BaseException] = []
        self.lock = threading.Lock()
        self.timers = timers  # given: the foreground's join parks (``_Joined``)
        self.done = False  # the background has ended
        # A parked join's waker and the timer bounding it; set and taken under ``lock``.
        # The waker leads back here through the foreground's generator: taking it when
        # the background ends (or the timer fires) breaks that cycle.
        self.joiner: Optional[Waker] = None
        self.join_timer: Optional["ActivityTimer"] = None

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            first = not self.errors
            self.errors.append(detached(exc))
        if first:
            self.on_error(exc)

    def guarded(self, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except Exception as exc:
            self.fail(exc)
            return None

    def step(self) -> object:
        """The background's step on a pooled worker."""
        return self._step(True)

    def _step(self, pooled: bool) -> object:
        result = self.guarded(self._background_step)
        if result is not PARKED:
            self._ended(pooled)
        return result

    def _background_step(self) -> object:
        return self.background(self.wake)

    def wake(self) -> None:
        assert self.task is not None
        if self.inline is not None and self.inline():
            if self._step(False) is not PARKED:  # run here, by the thread whose event woke it
                self.group.finish(self.task)
            return
        try:
            self.group.resume(self.task, self.step)
        except RuntimeError as exc:  # no thread to be had: end the pair rather than hang
            self.fail(exc)
            self._ended()
            self.group.finish(self.task)

    def _ended(self, pooled: bool = False) -> None:
        """The background is over: resume a parked join (on this very worker, once its
        step has returned, if the background ran on a pooled worker)."""
        with self.lock:
            self.done = True
            joiner, timer = self.joiner, self.join_timer
            self.joiner = self.join_timer = None
        if timer is not None:
            timer.cancel()
        if joiner is not None:
            self.group.after_step(joiner) if pooled else joiner()

    def _give_up(self) -> None:
        """A parked join's time is up (the timer wheel's thread): resume it unfinished."""
        with self.lock:
            joiner = self.joiner
            self.joiner = self.join_timer = None
        if joiner is not None:
            joiner()

    def join(self, timeout: float) -> "Steps[bool]":
        """Wait up to ``timeout`` seconds for the background to end; True if it has. With
        timers the wait parks (a connection lingering for its other direction, up to
        ``uplinkOnly``/``downlinkOnly``, keeps no thread); without, it blocks."""
        if self.done:
            return True
        if self.timers is None:
            _Joined(self, timeout).block()
        else:
            yield _Joined(self, timeout)
        return self.done


class _Joined(Wait):
    """``_Pair.join``'s wait: the background's end, or ``timeout`` seconds on the timer
    wheel, resumes the foreground."""

    __slots__ = ("pair", "timeout")

    def __init__(self, pair: _Pair, timeout: float):
        self.pair = pair
        self.timeout = timeout

    def arm(self, wake: Waker) -> None:
        pair = self.pair
        assert pair.timers is not None  # without, ``join`` blocks instead
        # Made before the joiner is published, so an end racing us always finds the timer
        # to cancel: a live timer would keep the pair, and the relay it closes over, alive.
        timer = pair.timers.new_timer(self.timeout, pair._give_up)
        with pair.lock:
            waiting = not pair.done
            if waiting:
                pair.joiner, pair.join_timer = wake, timer
        if not waiting:
            timer.cancel()
            wake()

    def block(self) -> None:
        task = self.pair.task
        assert task is not None
        task.join(self.timeout)


def run_pair(
    group: ThreadGroup,
    name: str,
    background: Callable[[Waker], object],
    foreground: Callable[[], object],
    on_error: Callable[[BaseException], None],
    join_timeout: float,
    inline: Optional[Callable[[], bool]] = None,
) -> Optional[BaseException]:
    """``run_pair_steps`` with a foreground that never waits, run in this thread."""
    return drive(run_pair_steps(group, name, background, at_once(foreground), on_error,
                                join_timeout, inline))


def run_pair_steps(
    group: ThreadGroup,
    name: str,
    background: Callable[[Waker], object],
    foreground: "Steps[object]",
    on_error: Callable[[BaseException], None],
    join_timeout: float,
    inline: Optional[Callable[[], bool]] = None,
    timers: Optional["TimerWheel"] = None,
    busy: Callable[[], bool] = lambda: False,
) -> "Steps[Optional[BaseException]]":
    """Run ``background`` in a pooled thread and ``foreground`` here; join within ``join_timeout``.

    ``background`` is given a waker. It may return ``PARKED`` once it has left that waker
    with what it waits on: its thread goes back to the pool, and the waker runs it again
    on a pooled thread (so it must pick up where it left off). A held, idle connection
    then costs no thread for that direction. When ``inline()`` says yes, the waker runs
    that step itself, in the thread whose event woke it, instead of on a pooled thread.
    ``foreground`` is steps: its waits are this generator's (``drive`` or ``spawn_steps``
    runs it), so under ``spawn_steps`` an idle foreground costs no thread either. Given
    ``timers`` (the Instance's ``TimerWheel``), so does a foreground that has finished and
    waits for the background: its join is a wait too, bounded by a timer.

    The first exception of either side calls ``on_error`` (which must unblock the other side,
    e.g. by interrupting the link and aborting the connection) and is returned without its
    traceback (``detached``), so keeping it makes no reference cycle.

    While ``busy()`` says so when a join times out (a relay that moved bytes within the
    timeout), the join starts over: the timeout gives up on a background that ignored its
    abort, never on a live transfer.
    """
    pair = _Pair(group, background, on_error, inline, timers)
    # Paced as the step that starts it: a relay run blocking (a UDP session's) stays unpaced.
    task = pair.task = group.reserve(name, paced=_worker.group is group)
    try:
        # A background that may run inline takes its first step here: it sends what is
        # queued and parks, so it costs no thread until an event wakes it.
        pair.wake() if inline is not None else group.resume(task, pair.step)
    except RuntimeError:  # nothing started: the caller's to handle
        group.finish(task)
        foreground.close()
        raise
    try:
        yield from foreground
    except Exception as exc:
        pair.fail(exc)
    joined = yield from pair.join(join_timeout)
    while not joined and busy():
        joined = yield from pair.join(join_timeout)
    if not joined:
        on_error(TimeoutError(f"{name} did not finish in {join_timeout}s"))
        yield from pair.join(join_timeout)
    errors = pair.errors
    return errors[0] if errors else None
