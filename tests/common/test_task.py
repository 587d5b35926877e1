"""ThreadGroup and run_pair (common/task.py): reuse, expiry, joins, error propagation."""
import contextlib
import gc
import sys
import threading
import time
import weakref

import pytest

from v2sync.common import task as task_module
from v2sync.common.signal import TimerWheel
from v2sync.common.task import (
    MAX_SURPLUS_SPREAD,
    Latch,
    PARKED,
    SURPLUS_LINGER,
    SWITCH_INTERVAL,
    ThreadGroup,
    Wait,
    at_once,
    drive,
    run_pair,
    run_pair_steps,
    tune_for_many_threads,
    widen_futex_hash,
)

WAIT = 5.0


def _run(group: ThreadGroup, name: str, fn=lambda: None):
    handle = group.spawn(name, fn)
    handle.join(WAIT)
    assert not handle.is_alive()
    return handle


def test_a_finished_worker_takes_the_next_task():
    group = ThreadGroup("t", idle_timeout=WAIT)
    seen = []
    try:
        _run(group, "one", lambda: seen.append(threading.get_ident()))
        _run(group, "two", lambda: seen.append(threading.get_ident()))
    finally:
        assert group.shutdown(WAIT)
    assert seen[0] == seen[1]


def test_the_worker_is_named_after_its_task():
    group = ThreadGroup("t", idle_timeout=WAIT)
    names = []
    try:
        _run(group, "first", lambda: names.append(threading.current_thread().name))
        _run(group, "second", lambda: names.append(threading.current_thread().name))
    finally:
        assert group.shutdown(WAIT)
    assert names == ["first", "second"]


def test_parked_workers_expire_after_the_idle_timeout():
    group = ThreadGroup("t", idle_timeout=0.05)
    try:
        handle = group.spawn("short", lambda: None)
        handle.join(WAIT)
        worker = next(iter(group._threads))
        worker.join(WAIT)  # it parks, times out and leaves on its own
        assert not worker.is_alive()
        assert not group._threads
    finally:
        assert group.shutdown(WAIT)


def test_no_more_than_max_idle_workers_stay_parked():
    """Workers beyond max_idle linger briefly (SURPLUS_LINGER), then leave."""
    group = ThreadGroup("t", max_idle=1, idle_timeout=WAIT)
    release = threading.Event()
    try:
        handles = [group.spawn(f"w{i}", lambda: release.wait(WAIT)) for i in range(3)]
        workers = list(group._threads)
        assert len(workers) == 3
        release.set()
        for handle in handles:
            handle.join(WAIT)
        deadline = time.monotonic() + SURPLUS_LINGER + WAIT
        while sum(worker.is_alive() for worker in workers) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # the two beyond max_idle leave; the parked one stays
        time.sleep(0.1)
        assert sum(worker.is_alive() for worker in workers) == 1
        assert len(group._idle) == 1
    finally:
        assert group.shutdown(WAIT)


def test_surplus_workers_leave_one_after_another():
    """Beyond max_idle, each further worker parks a little longer than the one before, so a
    burst of finished tasks does not become a burst of thread exits."""
    group = ThreadGroup("t", max_idle=2, idle_timeout=WAIT)
    assert group._surplus_wait(2) == SURPLUS_LINGER
    assert group._surplus_wait(3) > group._surplus_wait(2)
    assert group._surplus_wait(10**6) <= SURPLUS_LINGER + MAX_SURPLUS_SPREAD
    release = threading.Event()
    try:
        handles = [group.spawn(f"w{i}", lambda: release.wait(WAIT)) for i in range(6)]
        release.set()
        for handle in handles:
            handle.join(WAIT)
        assert len(group._idle) <= 6
        _run(group, "reuses a parked worker")  # surplus or not, a parked worker takes work
        deadline = time.monotonic() + SURPLUS_LINGER + WAIT
        while len(group._threads) > group.max_idle and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(group._threads) == group.max_idle
    finally:
        assert group.shutdown(WAIT)


def test_a_failing_task_is_logged_and_its_worker_lives_on(caplog):
    group = ThreadGroup("t", idle_timeout=WAIT)
    try:
        _run(group, "bad", lambda: 1 / 0)
        _run(group, "good")
    finally:
        assert group.shutdown(WAIT)
    assert "thread bad failed" in caplog.text


def test_shutdown_joins_running_and_parked_workers():
    group = ThreadGroup("t", idle_timeout=WAIT)
    release = threading.Event()
    _run(group, "parked")
    running = group.spawn("running", lambda: release.wait(WAIT))
    assert running.is_alive()
    threading.Timer(0.05, release.set).start()
    assert group.shutdown(WAIT)
    assert not group._threads and not running.is_alive()


def test_join_waits_for_live_tasks():
    group = ThreadGroup("t", idle_timeout=WAIT)
    release = threading.Event()
    try:
        group.spawn("busy", lambda: release.wait(WAIT))
        assert not group.join(0.01)
        release.set()
        assert group.join(WAIT)
        assert group.live() == []
    finally:
        assert group.shutdown(WAIT)


def test_run_pair_reports_a_background_error_once_and_unblocks_the_foreground():
    group = ThreadGroup("t", idle_timeout=WAIT)
    stop = threading.Event()
    errors = []

    def background(wake):
        raise ValueError("background failed")

    def foreground():
        assert stop.wait(WAIT)  # only on_error can end this side

    def on_error(exc):
        errors.append(exc)
        stop.set()

    try:
        error = run_pair(group, "pair", background, foreground, on_error, WAIT)
    finally:
        assert group.shutdown(WAIT)
    assert isinstance(error, ValueError) and errors == [error]


def test_run_pair_gives_up_on_a_stuck_side_after_the_join_timeout():
    group = ThreadGroup("t", idle_timeout=WAIT)
    stop = threading.Event()
    seen = []

    def on_error(exc):
        seen.append(exc)
        stop.set()  # what aborting the connection does for a real relay

    try:
        error = run_pair(group, "pair", lambda wake: stop.wait(WAIT), lambda: None, on_error,
                         0.05)
    finally:
        assert group.shutdown(WAIT)
    assert error is None
    assert len(seen) == 1 and isinstance(seen[0], TimeoutError)


def test_run_pair_waits_on_while_the_background_is_busy():
    # A relay whose inactivity timer is live is still moving bytes: the join starts over
    # instead of giving up (a half-closed download outliving the join timeout).
    group = ThreadGroup("t", idle_timeout=WAIT)
    finished = threading.Event()
    checks = []

    def busy():
        checks.append(time.monotonic())
        return len(checks) < 6

    def background(wake):
        time.sleep(0.25)  # past two join timeouts
        finished.set()

    try:
        error = drive(run_pair_steps(group, "pair", background, at_once(lambda: None),
                                     lambda exc: pytest.fail(f"gave up: {exc!r}"), 0.1,
                                     busy=busy))
    finally:
        assert group.shutdown(WAIT)
    assert error is None and finished.is_set() and 2 <= len(checks) < 6


def test_run_pair_propagates_first_error_and_unblocks_other_side():
    group = ThreadGroup("t")
    stop = threading.Event()

    def background(wake):
        stop.wait(5)

    def foreground():
        raise ValueError("boom")

    err = run_pair(group, "pair", background, foreground, lambda e: stop.set(), 5)
    assert isinstance(err, ValueError)
    assert group.join(2)


class _Held:
    """Something a failing side's frame refers to (a cipher, a buffer, a socket in a relay)."""


def _error_frees_what_the_failing_side_held(fail_in_background: bool) -> None:
    group = ThreadGroup("t", idle_timeout=WAIT)
    held = []

    def failing():
        thing = _Held()
        held.append(weakref.ref(thing))
        raise ValueError("failed while holding a thing")

    sides = ((lambda wake: failing(), lambda: None) if fail_in_background
             else (lambda wake: None, failing))
    gc.disable()  # only reference counting may free it: no cycle may hold it
    try:
        error = run_pair(group, "pair", *sides, lambda exc: None, WAIT)
        assert isinstance(error, ValueError) and str(error) == "failed while holding a thing"
        assert error.__traceback__ is None
        del error
        assert held[0]() is None
    finally:
        gc.enable()
        assert group.shutdown(WAIT)


def test_a_kept_foreground_error_makes_no_reference_cycle():
    _error_frees_what_the_failing_side_held(fail_in_background=False)


def test_a_kept_background_error_makes_no_reference_cycle():
    _error_frees_what_the_failing_side_held(fail_in_background=True)


# -- parked tasks: a step gives its thread back, a waker resumes the task ----------------

def test_a_parked_task_holds_no_thread_stays_live_and_resumes_where_told():
    group = ThreadGroup("t", max_idle=0, idle_timeout=WAIT)
    steps = []

    def first():
        steps.append(("first", threading.get_ident()))
        return PARKED

    try:
        handle = group.spawn("parks", first)
        deadline = time.monotonic() + WAIT
        while group._threads and time.monotonic() < deadline:
            time.sleep(0.01)  # max_idle 0: the worker leaves once its step parked
        assert not group._threads and steps == [("first", steps[0][1])]
        assert handle.is_alive() and handle in group.live()
        group.resume(handle, lambda: steps.append("second"))
        handle.join(WAIT)
        assert not handle.is_alive() and steps[1:] == ["second"]
        assert not group.live()
    finally:
        assert group.shutdown(WAIT)


def test_a_failing_step_ends_its_task():
    group = ThreadGroup("t", idle_timeout=WAIT)
    try:
        handle = group.spawn("parks", lambda: PARKED)
        group.resume(handle, lambda: 1 / 0)
        handle.join(WAIT)
        assert not handle.is_alive() and not group.live()
    finally:
        assert group.shutdown(WAIT)


def test_run_pair_joins_a_background_that_parked_and_was_woken():
    group = ThreadGroup("t", idle_timeout=WAIT)
    wakers = []
    ran = []

    def background(wake):
        if not wakers:
            wakers.append(wake)
            return PARKED  # as a drain does on an empty pipe
        ran.append(threading.current_thread().name)
        return None

    def foreground():
        deadline = time.monotonic() + WAIT
        while not wakers and time.monotonic() < deadline:
            time.sleep(0.01)
        wakers[0]()  # what a write to the pipe does

    try:
        assert run_pair(group, "pair", background, foreground, lambda exc: None, WAIT) is None
    finally:
        assert group.shutdown(WAIT)
    assert ran == ["pair"]


def test_a_waker_that_gets_no_thread_ends_the_pair_with_that_error(monkeypatch):
    group = ThreadGroup("t", max_idle=0, idle_timeout=WAIT)
    wakers = []
    seen = []

    def background(wake):
        wakers.append(wake)
        return PARKED

    def foreground():
        deadline = time.monotonic() + WAIT
        while (not wakers or group._threads) and time.monotonic() < deadline:
            time.sleep(0.01)

        def refuse(task):
            raise RuntimeError("can't start new thread")
        monkeypatch.setattr(group, "_start_thread", refuse)
        wakers[0]()

    try:
        error = run_pair(group, "pair", background, foreground, seen.append, WAIT)
    finally:
        monkeypatch.undo()
        assert group.shutdown(WAIT)
    assert isinstance(error, RuntimeError)
    assert len(seen) == 1 and isinstance(seen[0], RuntimeError)
    assert not group.live()


def test_shutdown_joins_a_task_woken_after_it_began():
    group = ThreadGroup("t", max_idle=0, idle_timeout=WAIT)
    group.spawn("busy", lambda: time.sleep(0.6))  # shutdown's first look finds this
    handle = group.spawn("parks", lambda: PARKED)
    deadline = time.monotonic() + WAIT
    while not group._idle and time.monotonic() < deadline:
        time.sleep(0.01)  # the step parked; its worker lingers idle, and shutdown ends it

    def wake_late():
        time.sleep(0.1)
        group.resume(handle, lambda: time.sleep(0.5))  # a thread shutdown has not seen

    waker = threading.Thread(target=wake_late)
    waker.start()
    try:
        assert group.shutdown(WAIT)
    finally:
        waker.join(WAIT)
    assert not handle.is_alive() and not group._threads


# -- many threads at once (issue 14 part 2: a mass close ends thousands of tasks together) ----

def test_many_tasks_ending_together_are_all_joined_and_the_pool_stays_bounded():
    group = ThreadGroup("t", max_idle=8, idle_timeout=WAIT)
    start = threading.Event()
    count = 200
    try:
        handles = [group.spawn(f"w{i}", lambda: start.wait(WAIT)) for i in range(count)]
        assert len(group.live()) == count
        start.set()  # every task ends at once; no lock orders their bookkeeping
        assert group.join(WAIT)
        assert not any(h.is_alive() for h in handles)
        deadline = time.monotonic() + SURPLUS_LINGER + WAIT
        while len(group._threads) > group.max_idle + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # Two workers parking at the same instant may both see room: a slot or two over.
        assert len(group._threads) <= group.max_idle + 2
        _run(group, "after")  # a parked worker still takes new work
    finally:
        assert group.shutdown(WAIT)
    assert not group._threads


def test_shutdown_while_tasks_are_ending_releases_every_worker_at_once():
    """Workers that park while shutdown empties the idle list must not wait out their idle
    timeout (30 s here): shutdown returns as soon as their tasks end."""
    group = ThreadGroup("t", idle_timeout=30.0)
    start = threading.Event()
    for i in range(50):
        group.spawn(f"w{i}", lambda: start.wait(WAIT))
    start.set()
    started = time.monotonic()
    assert group.shutdown(WAIT)
    assert time.monotonic() - started < WAIT
    assert not group._threads and not group._idle


def test_a_closed_group_parks_no_worker():
    group = ThreadGroup("t", idle_timeout=30.0)
    assert group.shutdown(WAIT)
    handle = group.spawn("late", lambda: None)  # a spawn racing shutdown still runs its task
    handle.join(WAIT)
    assert not handle.is_alive()
    deadline = time.monotonic() + WAIT
    while group._threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not group._threads and not group._idle  # it left instead of parking for 30 s


def test_tuning_for_many_threads_keeps_a_long_switch_interval(monkeypatch):
    # An Instance started earlier in this process has tuned it once already (and its test
    # may have put the interval back): start from an untuned process, whatever ran before.
    monkeypatch.setattr(task_module, "_tuned", False)
    previous = sys.getswitchinterval()
    try:
        tune_for_many_threads()
        assert sys.getswitchinterval() >= SWITCH_INTERVAL - 1e-9
        widen_futex_hash()  # refused on kernels before 6.16, accepted after: never raises
    finally:
        sys.setswitchinterval(previous)


class _Gate(Wait):
    """A wait opened by the test: ``arm`` keeps the waker, ``open`` calls it."""

    def __init__(self):
        self.wake = None
        self.opened = threading.Event()

    def arm(self, wake):
        self.wake = wake

    def block(self):
        assert self.opened.wait(WAIT)

    def open(self):
        self.opened.set()
        if self.wake is not None:
            self.wake()


def _steps(gate, seen):
    seen.append(("before", threading.get_ident()))
    yield gate
    seen.append(("after", threading.get_ident()))
    return "done"


def test_a_task_of_steps_gives_its_thread_back_while_it_waits_and_resumes_after():
    group = ThreadGroup("t", max_idle=0, idle_timeout=WAIT)
    gate, seen = _Gate(), []
    try:
        handle = group.spawn_steps("steps", _steps(gate, seen))
        deadline = time.monotonic() + WAIT
        while (gate.wake is None or group._threads) and time.monotonic() < deadline:
            time.sleep(0.01)  # max_idle 0: the worker leaves once the task waits
        assert not group._threads and [s for s, _ in seen] == ["before"]
        assert handle.is_alive() and handle in group.live()
        gate.open()
        handle.join(WAIT)
        assert not handle.is_alive() and [s for s, _ in seen] == ["before", "after"]
        assert not group.live()
    finally:
        assert group.shutdown(WAIT)


def test_a_task_of_steps_whose_waker_gets_no_thread_is_closed_and_ended(monkeypatch):
    group = ThreadGroup("t", idle_timeout=WAIT)
    gate, seen = _Gate(), []
    closed = []

    def steps():
        try:
            yield from _steps(gate, seen)
        finally:
            closed.append(True)

    try:
        handle = group.spawn_steps("steps", steps())
        deadline = time.monotonic() + WAIT
        while gate.wake is None and time.monotonic() < deadline:
            time.sleep(0.01)

        def no_thread(handle, step):
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(group, "resume", no_thread)
        gate.open()
        assert closed == [True] and not handle.is_alive()
        assert [s for s, _ in seen] == ["before"]  # its cleanup ran, its next step did not
    finally:
        monkeypatch.undo()
        assert group.shutdown(WAIT)


def test_drive_blocks_through_each_wait_in_this_thread_and_returns_the_result():
    gate, seen = _Gate(), []
    threading.Timer(0.05, gate.open).start()
    assert drive(_steps(gate, seen)) == "done"
    me = threading.get_ident()
    assert seen == [("before", me), ("after", me)]


def _wait_until(predicate) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert predicate()


def _joining_pair(group, wheel, wakers, seen, join_timeout=WAIT, held=None, threads=None):
    """A pair whose background parks until the test wakes it, whose foreground ends at
    once: the foreground's join is what waits. ``held``: kept by the background only.
    ``threads`` gets the thread of the background's last step, then of the join's end."""
    def background(wake):
        assert held is None or held
        if not wakers:
            wakers.append(wake)
            return PARKED
        if threads is not None:
            threads.append(threading.get_ident())
        return None

    def pair():
        error = yield from run_pair_steps(group, "pair", background, _nothing(), seen.append,
                                          join_timeout, timers=wheel)
        if threads is not None:
            threads.append(threading.get_ident())
        seen.append(("ended", error))
    return pair()


def _nothing():
    return
    yield  # a generator


@contextlib.contextmanager
def _group_and_wheel(max_idle: int = task_module.MAX_IDLE):
    group = ThreadGroup("t", max_idle=max_idle, idle_timeout=WAIT)
    wheel = TimerWheel()
    wheel.start()
    try:
        yield group, wheel
    finally:
        wheel.stop()
        assert group.shutdown(WAIT)


def test_with_timers_a_join_waiting_for_its_other_side_holds_no_thread():
    wakers, seen = [], []
    with _group_and_wheel(max_idle=0) as (group, wheel):
        handle = group.spawn_steps("relay", _joining_pair(group, wheel, wakers, seen))
        _wait_until(lambda: wakers and not group._threads)  # max_idle 0: workers leave
        assert handle.is_alive() and seen == []
        wakers[0]()  # the background's pipe gets its EOF: it ends, the join resumes
        handle.join(WAIT)
        assert seen == [("ended", None)]
        # The background's own task ends just after it has resumed the join.
        _wait_until(lambda: not group.live())


def test_a_parked_join_is_bounded_by_a_timer_then_aborts_and_gives_up():
    wakers, seen = [], []
    with _group_and_wheel() as (group, wheel):
        started = time.monotonic()
        handle = group.spawn_steps("relay", _joining_pair(group, wheel, wakers, seen, 0.1))
        handle.join(WAIT)
        assert time.monotonic() - started < WAIT
        # on_error was told once (the relay's abort), then the second wait ran out too.
        assert len(seen) == 2 and isinstance(seen[0], TimeoutError)
        assert seen[1] == ("ended", None)
        assert len(wheel) == 0  # both timers fired; none is left holding the pair
        wakers[0]()  # let the background end: the group then has nothing live


def test_a_join_resumed_by_its_background_cancels_its_timer_and_lets_the_pair_go():
    wakers, seen = [], []
    with _group_and_wheel(max_idle=0) as (group, wheel):
        held = _Held()
        probe = weakref.ref(held)
        handle = group.spawn_steps("relay", _joining_pair(group, wheel, wakers, seen,
                                                          held=held))
        del held
        _wait_until(lambda: wakers and not group._threads)
        wakers[0]()
        handle.join(WAIT)
        _wait_until(lambda: not group.live())  # the background's task ends just after
        wakers.clear()
        gc.collect()
        # The cancelled timer's heap entry lives on until the wheel compacts; it must
        # not keep the pair (and what a relay's background holds) alive with it.
        assert seen == [("ended", None)] and probe() is None


def test_a_join_resumed_by_a_pooled_background_goes_on_in_that_same_worker():
    wakers, seen, threads = [], [], []
    with _group_and_wheel() as (group, wheel):
        handle = group.spawn_steps("relay", _joining_pair(group, wheel, wakers, seen,
                                                          threads=threads))
        _wait_until(lambda: wakers and len(group._idle) == len(group._threads))
        parked_before = len(group._idle)
        wakers[0]()  # a pipe's waker: the background's next step goes to a pooled worker
        handle.join(WAIT)
        assert seen == [("ended", None)]
        # One worker was taken from the pool; it ran the background's last step, then
        # the join's continuation, without waking another.
        assert len(threads) == 2 and threads[0] == threads[1]
        _wait_until(lambda: len(group._idle) == parked_before)


# -- Latch: a one-time event a task waits for without a thread ---------------------------

def test_a_latch_wakes_its_armed_waiter_once_and_lets_it_go():
    latch = Latch()
    woken = []
    latch.arm(lambda: woken.append(1))
    assert woken == [] and not latch.is_set()
    latch.set()
    latch.set()  # a second set wakes nobody
    assert woken == [1] and latch.is_set()
    assert latch._wake is None  # the waker is not kept: no cycle through it


def test_a_latch_armed_once_set_wakes_at_once():
    latch = Latch()
    latch.set()
    woken = []
    latch.arm(lambda: woken.append(1))
    assert woken == [1]


def test_a_latch_blocks_a_driven_task_until_set():
    latch = Latch()
    timer = threading.Timer(0.05, latch.set)
    timer.start()
    try:
        def steps():
            yield latch
            return "after"
        assert drive(steps()) == "after"
    finally:
        timer.join()


# -- wait_lingering: a bounded number of threads wait before they park ---------------------

def test_wait_lingering_waits_while_tokens_last_and_never_past_them(monkeypatch):
    monkeypatch.setattr(task_module, "_lingering", threading.BoundedSemaphore(1))
    inside = threading.Event()
    release = threading.Event()
    results = []

    def first():
        results.append(task_module.wait_lingering(
            lambda: (inside.set(), release.wait(WAIT))[1]))

    holder = threading.Thread(target=first)
    holder.start()
    try:
        assert inside.wait(WAIT)
        started = time.monotonic()
        # The one token is taken: the next waiter is told at once to park instead.
        assert task_module.wait_lingering(time.sleep, WAIT) is None
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        holder.join(WAIT)
    assert results == [True]
    assert task_module.wait_lingering(lambda: "again") == "again"  # the token came back
