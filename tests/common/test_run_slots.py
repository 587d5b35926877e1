"""ThreadGroup run slots (common/task.py): a group with ``run_slots`` runs that many steps at
once, queues the rest, frees a slot while a step blocks (``leave_slot``), and never lets a
queued step wait for ever."""
import os
import socket
import threading
import time

import pytest

from v2sync.common import task as task_module
from v2sync.common.net import Address, Destination
from v2sync.common.task import (ThreadGroup, crowded, leave_slot, take_slot,
                                outside_slot)
from v2sync.transport.copy import CROWDED_READ_SIZE, FIRST_READ_SIZE, parkable_reads
from v2sync.transport.internet.conn import Connection, recv_waiting, send_waiting
from v2sync.transport.internet.readiness import ReadWaiter

from support.resources import wait_for

WAIT = 5.0


@pytest.fixture
def no_overdue(monkeypatch):
    """A queue that only a freed slot drains: the watcher's deadline is far away."""
    monkeypatch.setattr(task_module, "QUEUE_MAX_WAIT", 60.0)


def _paced(group, name, fn):
    """Run ``fn`` as a paced task (as ``spawn_steps`` and a relay's steps are)."""
    handle = group.reserve(name, paced=True)
    group.resume(handle, fn)
    return handle


def _blocker(started, release):
    def run():
        started.release()
        release.wait(WAIT)
    return run


def _wait_until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.001)
    return predicate()


def test_steps_beyond_the_slots_queue_until_one_ends(no_overdue):
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=2)
    started, release = threading.Semaphore(0), threading.Event()
    ran = []
    try:
        blockers = [_paced(group, f"b{i}", _blocker(started, release)) for i in range(2)]
        assert started.acquire(timeout=WAIT) and started.acquire(timeout=WAIT)
        queued = _paced(group, "queued", lambda: ran.append(1))
        time.sleep(0.05)
        assert ran == [] and group.crowded()  # both slots held, nobody left a slot
        release.set()
        queued.join(WAIT)
        assert ran == [1] and not queued.is_alive()
        for handle in blockers:
            handle.join(WAIT)
    finally:
        release.set()
        assert group.shutdown(WAIT)


def test_a_step_waiting_outside_its_slot_lets_a_queued_step_run(no_overdue):
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=1)
    condition, waiting, done = threading.Condition(), threading.Event(), threading.Event()
    seen = []

    def waits():
        with condition:
            waiting.set()
            while not done.is_set():
                outside_slot(condition.wait, WAIT)
        seen.append("waiter")

    try:
        waiter = _paced(group, "waiter", waits)
        assert waiting.wait(WAIT)
        other = _paced(group, "other", lambda: seen.append("other"))
        other.join(WAIT)
        assert seen == ["other"]  # ran while the waiter still waited, without the watcher
        with condition:
            done.set()
            condition.notify()
        waiter.join(WAIT)
        assert seen == ["other", "waiter"]
    finally:
        done.set()
        assert group.shutdown(WAIT)


def test_a_step_blocking_in_its_slot_still_lets_queued_steps_run_in_time():
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=1)
    started, release = threading.Semaphore(0), threading.Event()
    try:
        blocker = _paced(group, "blocker", _blocker(started, release))
        assert started.acquire(timeout=WAIT)
        others = [_paced(group, f"o{i}", lambda: None) for i in range(5)]
        for handle in others:  # the watcher gave each a thread: the blocker still blocks
            handle.join(WAIT)
            assert not handle.is_alive()
        assert blocker.is_alive()
    finally:
        release.set()
        assert group.shutdown(WAIT)


def test_unpaced_tasks_neither_queue_nor_take_slots(no_overdue):
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=1)
    started, release = threading.Semaphore(0), threading.Event()
    ran, seen = [], []
    try:
        loops = [group.spawn(f"loop{i}", _blocker(started, release)) for i in range(3)]
        for _ in loops:  # a blocking loop each (a UDP session's): all run at once
            assert started.acquire(timeout=WAIT)
        assert not group.crowded()
        _paced(group, "step", lambda: ran.append(1)).join(WAIT)
        assert ran == [1]  # the loops hold no slot
        group.spawn("plain", lambda: seen.append((crowded(), leave_slot()))).join(WAIT)
        assert seen == [(False, None)]  # outside a paced step: never crowded, no slot
    finally:
        release.set()
        assert group.shutdown(WAIT)


def test_crowded_is_seen_from_a_worker_of_a_full_group(no_overdue):
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=1)
    seen = []
    try:
        _paced(group, "alone", lambda: seen.append(crowded())).join(WAIT)
        assert seen == [True]  # its own step fills the one slot
        assert not crowded()  # not a worker: never crowded
        assert not group.crowded()
        roomy = ThreadGroup("roomy", idle_timeout=WAIT, run_slots=4)
        try:
            _paced(roomy, "alone", lambda: seen.append(crowded())).join(WAIT)
        finally:
            assert roomy.shutdown(WAIT)
        assert seen == [True, False]
    finally:
        assert group.shutdown(WAIT)


def test_leave_and_take_outside_a_limited_group_change_nothing():
    assert leave_slot() is None
    take_slot(None)
    group = ThreadGroup("free", idle_timeout=WAIT)  # no run limit
    tokens = []
    try:
        _paced(group, "s", lambda: tokens.append(leave_slot())).join(WAIT)
    finally:
        assert group.shutdown(WAIT)
    assert tokens == [None]


def test_shutdown_runs_queued_steps_and_stops_the_watcher(no_overdue):
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=1)
    started, release = threading.Semaphore(0), threading.Event()
    ran = []
    blocker = _paced(group, "blocker", _blocker(started, release))
    assert started.acquire(timeout=WAIT)
    queued = [_paced(group, f"q{i}", lambda i=i: ran.append(i)) for i in range(3)]
    watcher = group._watcher
    assert watcher is not None
    release.set()
    blocker.join(WAIT)
    assert group.shutdown(WAIT)
    assert sorted(ran) == [0, 1, 2]
    assert not any(handle.is_alive() for handle in queued)
    assert not watcher._thread.is_alive()


@pytest.mark.parametrize("idle_timeout", [0.05, WAIT])
def test_the_watcher_leaves_soon_once_nothing_is_queued(idle_timeout):
    """It lingers QUEUE_WATCH_LINGER, whatever the workers' idle timeout: a process where
    steps queue now and then would otherwise tick a thousand times a second for seconds
    after each time. A step queued later gets a new watcher."""
    group = ThreadGroup("t", idle_timeout=idle_timeout, run_slots=1)
    started, release = threading.Semaphore(0), threading.Event()
    try:
        blocker = _paced(group, "blocker", _blocker(started, release))
        assert started.acquire(timeout=WAIT)
        _paced(group, "queued", lambda: None).join(WAIT)
        watcher = group._watcher
        assert watcher is not None
        release.set()
        blocker.join(WAIT)
        assert _wait_until(lambda: not watcher._thread.is_alive(), timeout=0.5)
        started2 = threading.Semaphore(0)
        release.clear()
        again = _paced(group, "again", _blocker(started2, release))
        assert started2.acquire(timeout=WAIT)
        _paced(group, "queued2", lambda: None).join(WAIT)  # a new watcher served it
        assert group._watcher is not watcher
        release.set()
        again.join(WAIT)
    finally:
        release.set()
        assert group.shutdown(WAIT)


def test_many_steps_through_two_slots_all_run():
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=2)
    ran = []
    lock = threading.Lock()

    def step(i):
        with lock:
            ran.append(i)

    try:
        handles = [_paced(group, f"s{i}", lambda i=i: step(i)) for i in range(500)]
        for handle in handles:
            handle.join(WAIT)
    finally:
        assert group.shutdown(WAIT)
    assert sorted(ran) == list(range(500))


# The socket helpers the transports read and write through.

def _connection(sock: socket.socket, armed: bool) -> Connection:
    conn = Connection(sock, remote=Destination(Address.parse("127.0.0.1"), 1))
    conn.read_timeout_armed = armed  # as arm_read_timeout says, without the kernel timeout
    return conn


def test_an_armed_read_of_a_crowded_worker_does_not_wait(no_overdue):
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=1)
    a, b = socket.socketpair()
    outcome = []

    def read():
        started = time.monotonic()
        try:
            recv_waiting(_connection(a, armed=True), 100)
        except BlockingIOError:
            outcome.append(time.monotonic() - started)

    try:
        _paced(group, "reader", read).join(WAIT)
    finally:
        assert group.shutdown(WAIT)
        a.close()
        b.close()
    assert len(outcome) == 1 and outcome[0] < WAIT


def test_an_unarmed_read_leaves_its_slot_while_it_waits(no_overdue):
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=1)
    a, b = socket.socketpair()
    got, ran = [], []
    try:
        reader = _paced(group, "reader", lambda: got.append(recv_waiting(_connection(a, armed=False), 100)))
        assert _wait_until(lambda: not group._active)  # blocked in recv: slot free
        _paced(group, "other", lambda: ran.append(1)).join(WAIT)
        assert ran == [1]
        b.sendall(b"hello")
        reader.join(WAIT)
        assert got == [b"hello"]
    finally:
        assert group.shutdown(WAIT)
        a.close()
        b.close()


def _drainer(sock, into, want):
    """A thread reading ``want`` bytes from ``sock`` into ``into``."""
    def drain():
        while len(into) < want:
            chunk = sock.recv(65536)
            if not chunk:
                return
            into.extend(chunk)
    reader = threading.Thread(target=drain)
    reader.start()
    return reader


@pytest.mark.parametrize("size", [1, 100_000, 3_000_000])
def test_send_waiting_delivers_every_byte(size):
    a, b = socket.socketpair()
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    received = bytearray()
    reader = _drainer(b, received, len(payload))
    try:
        send_waiting(a, payload)
        reader.join(WAIT)
    finally:
        a.close()
        b.close()
    assert bytes(received) == payload


def test_sendall_parts_delivers_parts_bigger_than_the_send_buffer():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    parts = [b"head", bytes(200_000), b"", b"tail" * 1000]
    received = bytearray()
    reader = _drainer(b, received, sum(map(len, parts)))
    conn = Connection(a, Destination(Address.parse("127.0.0.1"), 1))
    try:
        conn.sendall_parts(parts)
        reader.join(WAIT)
    finally:
        a.close()
        b.close()
    assert bytes(received) == b"".join(parts)


def _first_read(group, payload):
    """The first chunk a parking reader gets from a socket holding ``payload``, read in a
    paced step of ``group``."""
    a, b = socket.socketpair()
    waiter = ReadWaiter("test-waiter")
    got = []
    try:
        b.sendall(payload)
        conn = Connection(a, Destination(Address.parse("127.0.0.1"), 1))
        reads = parkable_reads(conn, None, waiter)
        _paced(group, "reader", lambda: got.append(next(reads))).join(WAIT)
        reads.close()
    finally:
        waiter.stop(WAIT)
        a.close()
        b.close()
    return got[0]


def test_a_crowded_reader_reads_a_big_first_chunk(no_overdue):
    payload = bytes(100_000)
    crowded_group = ThreadGroup("full", idle_timeout=WAIT, run_slots=1)
    roomy = ThreadGroup("roomy", idle_timeout=WAIT, run_slots=4)
    try:
        assert len(_first_read(crowded_group, payload)) == CROWDED_READ_SIZE
        assert len(_first_read(roomy, payload)) == FIRST_READ_SIZE
    finally:
        assert crowded_group.shutdown(WAIT)
        assert roomy.shutdown(WAIT)


def _recording_steps(out, tag):
    out.append(tag)
    return
    yield  # a generator: steps


def _order_on_one_cpu(ahead, rounds=20):
    """How many of ``rounds`` spawned tasks ran their first step before their spawner went
    on, spawner and workers sharing one CPU (as every thread of ``v2sync run`` does)."""
    out = []

    def spawner():
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})  # workers inherit it
        group = ThreadGroup("t", idle_timeout=WAIT, run_slots=4)
        try:
            group.spawn_steps("warm", _recording_steps(out, "warm"))  # a parked worker
            time.sleep(0.05)
            for i in range(rounds):
                group.spawn_steps("task", _recording_steps(out, f"task{i}"), ahead=ahead)
                out.append(f"spawner{i}")
                time.sleep(0.01)  # the worker parks again
        finally:
            group.shutdown(WAIT)

    thread = threading.Thread(target=spawner)
    thread.start()
    thread.join(WAIT * 2)
    return sum(out.index(f"task{i}") < out.index(f"spawner{i}") for i in range(rounds))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux: CPU affinity")
def test_a_task_spawned_ahead_runs_before_its_spawner_goes_on():
    """The dispatcher's outbound goes first (its dial is on the connection's path); a plain
    spawn's worker waits for the GIL until the spawner blocks."""
    assert _order_on_one_cpu(ahead=True) >= 15
    assert _order_on_one_cpu(ahead=False) <= 5


def test_ahead_yields_the_cpu_only_in_a_quiet_group(monkeypatch, no_overdue):
    """It yields when no other step runs and none has queued lately; a busy group (a mass
    close's teardown) keeps the GIL rather than queue for it behind the busy steps."""
    yields = []
    monkeypatch.setattr(task_module, "_sched_yield", lambda: yields.append(1))
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=2)
    started, release = threading.Semaphore(0), threading.Event()
    try:
        group.spawn_steps("warm", _recording_steps([], "warm"))
        # a parked worker: it needs the GIL to run
        wait_for(lambda: len(group._idle) == 1, WAIT, 0.001)
        group.spawn_steps("quiet", _recording_steps([], "quiet"), ahead=True)
        assert yields == [1]
        _paced(group, "busy", _blocker(started, release))  # a step running in a slot
        assert started.acquire(timeout=WAIT)
        group.spawn_steps("beside", _recording_steps([], "beside"), ahead=True)
        assert yields == [1]
        _paced(group, "busy2", _blocker(started, release))  # both slots taken
        assert started.acquire(timeout=WAIT)
        group.spawn_steps("queued", _recording_steps([], "queued"), ahead=True)
        assert yields == [1]  # queued for a slot: nobody to yield to
        release.set()
        wait_for(lambda: not group._active and not group._queue, WAIT, 0.001)
        group.spawn_steps("after", _recording_steps([], "after"), ahead=True)
        assert yields == [1]  # a step queued within QUIET_AFTER: still a busy spell
    finally:
        release.set()
        group.shutdown(WAIT)



def _handed_on(seen):
    """Steps that record their thread, hand on (``HAND_ON``) if started here, record again."""
    seen.append(("start", threading.get_ident(), task_module.started_here()))
    if task_module.started_here():
        yield task_module.HAND_ON
    seen.append(("rest", threading.get_ident(), task_module.started_here()))


def test_start_here_runs_the_first_step_in_the_caller_and_the_rest_in_a_pooled_thread():
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=4)
    seen = []
    try:
        handle = group.start_here("task", _handed_on(seen))
        handle.join(WAIT)
        assert not handle.is_alive() and not group.live()
    finally:
        assert group.shutdown(WAIT)
    me = threading.get_ident()
    assert seen[0] == ("start", me, True)
    assert seen[1][0] == "rest" and seen[1][1] != me and seen[1][2] is False
    assert not task_module.started_here()  # the caller's count is back


def test_start_here_in_a_busy_group_spawns_as_any_task(no_overdue):
    """A step already running (a burst): the task takes its turn for a run slot."""
    group = ThreadGroup("t", idle_timeout=WAIT, run_slots=2)
    started, release = threading.Semaphore(0), threading.Event()
    seen = []
    try:
        _paced(group, "busy", _blocker(started, release))
        assert started.acquire(timeout=WAIT)
        handle = group.start_here("task", _handed_on(seen))
        handle.join(WAIT)
        assert not handle.is_alive()
    finally:
        release.set()
        assert group.shutdown(WAIT)
    assert [(step, here) for step, _, here in seen] == [("start", False), ("rest", False)]
    assert seen[0][1] != threading.get_ident()


def test_a_task_that_ends_or_fails_in_its_first_step_is_finished_there(caplog):
    group = ThreadGroup("t", idle_timeout=WAIT)

    def failing():
        raise ValueError("boom")
        yield  # steps

    try:
        ended = group.start_here("ended", _recording_steps([], "x"))
        failed = group.start_here("failed", failing())
        assert not ended.is_alive() and not failed.is_alive() and not group.live()
    finally:
        assert group.shutdown(WAIT)
    assert "task failed failed" in caplog.text and "boom" in caplog.text
    assert not task_module.started_here()


def test_hand_on_is_nothing_to_a_task_driven_in_its_thread():
    seen = []

    def steps():
        seen.append(threading.get_ident())
        yield task_module.HAND_ON
        seen.append(threading.get_ident())

    task_module.drive(steps())
    assert seen == [threading.get_ident()] * 2


@pytest.mark.parametrize("wait, yields", [("HAND_AHEAD", [1]), ("HAND_ON", [])])
def test_hand_ahead_lets_go_of_the_cpu_for_the_rest_and_hand_on_does_not(monkeypatch,
                                                                            wait, yields):
    """What goes on after ``HAND_AHEAD`` is on the connection's path (a mux outbound's
    dispatch): it runs before the caller goes on, as a task spawned ``ahead`` does."""
    seen = []
    monkeypatch.setattr(task_module, "_sched_yield", lambda: seen.append(1))
    group = ThreadGroup("t", idle_timeout=WAIT)

    def steps():
        yield getattr(task_module, wait)

    try:
        group.start_here("task", steps()).join(WAIT)
    finally:
        assert group.shutdown(WAIT)
    assert seen == yields
