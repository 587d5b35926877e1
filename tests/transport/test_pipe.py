"""Pipe semantics: bounded writes, graceful close, interrupt (v2ray transport/pipe)."""
import threading
import time

import pytest

from v2sync.common.errors import PipeClosed, PipeInterrupted
from v2sync.transport.link import new_link_pair
from v2sync.common.task import PARKED
from v2sync.transport.copy import read_all_steps
from v2sync.transport.pipe import EOF, Pipe, PipeReadable, ReadTimeout

from support.steps import step_by_hand


def test_chunks_arrive_in_order_then_eof_after_close():
    pipe = Pipe(1024)
    pipe.write(b"one")
    pipe.write(b"two")
    pipe.close()
    assert pipe.read(1) == b"one"
    assert pipe.read(1) == b"two"
    assert pipe.read(1) is EOF
    assert pipe.read(1) is EOF  # EOF is sticky


def test_empty_write_is_not_eof():
    pipe = Pipe(16)
    pipe.write(b"")
    with pytest.raises(ReadTimeout):
        pipe.read(0.05)


def test_writer_blocks_past_limit_until_reader_drains():
    pipe = Pipe(4)
    pipe.write(b"abcde")  # more than the limit: full (v2ray's isFull is curSize > limit)
    done = threading.Event()

    def writer():
        pipe.write(b"efgh")
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    assert not done.wait(0.2), "writer should block while the pipe is full"
    assert pipe.read(1) == b"abcde"
    assert done.wait(2)
    t.join(2)
    assert pipe.read(1) == b"efgh"


def test_one_large_write_may_overshoot_the_limit():
    pipe = Pipe(4)
    pipe.write(b"x" * 100)  # must not deadlock: v2ray allows one chunk past the limit
    assert pipe.buffered == 100


def test_interrupt_wakes_blocked_reader_and_drops_data():
    pipe = Pipe(16)
    errors = []

    def reader():
        try:
            pipe.read(5)
        except PipeInterrupted as e:
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.05)
    pipe.interrupt()
    t.join(2)
    assert len(errors) == 1
    with pytest.raises(PipeInterrupted):
        pipe.write(b"late")


def test_interrupt_wakes_blocked_writer():
    pipe = Pipe(2)
    pipe.write(b"full")
    errors = []
    t = threading.Thread(target=lambda: _capture(errors, lambda: pipe.write(b"more")))
    t.start()
    time.sleep(0.05)
    pipe.interrupt()
    t.join(2)
    assert errors and isinstance(errors[0], PipeInterrupted)


def test_write_after_close_is_refused():
    pipe = Pipe(16)
    pipe.close()
    with pytest.raises(PipeClosed):
        pipe.write(b"x")


def test_try_write_with_slack_goes_past_the_limit_by_that_much_only():
    pipe = Pipe(limit=0)  # bufferSize 0: over its limit whenever a byte waits
    assert pipe.try_write(b"abc")
    assert not pipe.try_write(b"d")
    assert pipe.try_write(b"d", slack=4)  # 3 queued: within 0 + 4
    assert not pipe.try_write(b"e", slack=3)  # 4 queued: past 0 + 3
    assert pipe.read_all(0) == [b"abc", b"d"]


def test_try_write_drops_instead_of_blocking():
    pipe = Pipe(4)
    assert pipe.try_write(b"abcde")
    assert not pipe.try_write(b"f")
    assert pipe.read(1) == b"abcde"
    assert pipe.try_write(b"f")


def test_read_timeout_is_bounded():
    pipe = Pipe(4)
    start = time.monotonic()
    with pytest.raises(ReadTimeout):
        pipe.read(0.1)
    assert time.monotonic() - start < 2


def test_link_pair_is_crossed():
    inbound, outbound = new_link_pair(64, "t")
    inbound.writer.write(b"up")
    outbound.writer.write(b"down")
    assert outbound.reader.read(1) == b"up"
    assert inbound.reader.read(1) == b"down"
    inbound.interrupt()
    with pytest.raises(PipeInterrupted):
        outbound.reader.read(1)


def _capture(errors, fn):
    try:
        fn()
    except Exception as e:  # collected for the assertion in the test thread
        errors.append(e)


def test_unread_puts_bytes_back_in_front_unchanged():
    pipe = Pipe(64)
    pipe.write(b"first")
    pipe.write(b"second")
    got = pipe.read(1)
    pipe.unread(got)
    pipe.close()
    assert [pipe.read(1), pipe.read(1), pipe.read(1)] == [b"first", b"second", EOF]


# -- a reader that parks instead of waiting (read_all_or_park) ---------------------------

# What wakes a parked reader: each takes the waker, once.
EVENTS = [
    lambda p: p.write(b"x"),
    lambda p: p.try_write(b"x"),
    lambda p: p.unread(b"x"),
    lambda p: p.close(),
    lambda p: p.interrupt(),
]


def _parked(pipe):
    woken = []
    assert pipe.read_all_or_park(0, lambda: woken.append(1)) is PARKED
    return woken


@pytest.mark.parametrize("event", EVENTS)
def test_every_event_wakes_a_parked_reader_once(event):
    pipe = Pipe(1024)
    woken = _parked(pipe)
    event(pipe)
    assert woken == [1]
    if not pipe._interrupted and not pipe._closed:
        pipe.write(b"y")  # the waker was taken: a second event wakes nobody
        assert woken == [1]


def test_a_parking_read_returns_what_is_queued_and_eof_without_parking():
    pipe = Pipe(1024)
    pipe.write(b"a")
    pipe.write(b"b")
    never = []
    assert pipe.read_all_or_park(0, lambda: never.append(1)) == [b"a", b"b"]
    pipe.close()
    assert pipe.read_all_or_park(0, lambda: never.append(1)) is EOF
    assert never == []


def test_a_parking_read_waits_its_while_for_a_write_first():
    pipe = Pipe(1024)
    writer = threading.Timer(0.05, lambda: pipe.write(b"late"))
    writer.start()
    try:
        assert pipe.read_all_or_park(5.0, lambda: None) == [b"late"]
    finally:
        writer.join()


def test_an_interrupted_pipe_raises_for_a_parking_read():
    pipe = Pipe(1024)
    pipe.interrupt()
    with pytest.raises(PipeInterrupted):
        pipe.read_all_or_park(0, lambda: None)


def test_the_waker_runs_outside_the_pipe_lock():
    pipe = Pipe(1024)
    seen = []
    assert pipe.read_all_or_park(0, lambda: seen.append(pipe.read_all(0))) is PARKED
    pipe.write(b"z")  # a waker that reads at once must not deadlock on the mutex
    assert seen == [[b"z"]]


# -- a task's wait for a pipe (PipeReadable, transport.copy.read_all_steps) --------------

def _armed(pipe):
    woken = []
    PipeReadable(pipe).arm(lambda: woken.append(1))
    return woken


@pytest.mark.parametrize("event", EVENTS)
def test_every_event_wakes_an_armed_wait_once_and_reads_nothing(event):
    pipe = Pipe(1024)
    woken = _armed(pipe)
    assert woken == []
    event(pipe)
    assert woken == [1]
    if not pipe._interrupted and not pipe._closed:
        assert pipe.buffered == 1  # the wait took nothing
        pipe.write(b"y")
        assert woken == [1]


@pytest.mark.parametrize("ready", [
    lambda p: p.write(b"x"),
    lambda p: p.close(),
    lambda p: p.interrupt(),
])
def test_a_wait_armed_on_a_ready_pipe_wakes_at_once(ready):
    pipe = Pipe(1024)
    ready(pipe)
    assert _armed(pipe) == [1]


def test_a_blocking_wait_returns_for_a_write_and_for_an_interrupt():
    pipe = Pipe(1024)
    for event in (lambda: pipe.write(b"late"), pipe.interrupt):
        timer = threading.Timer(0.05, event)
        timer.start()
        try:
            PipeReadable(pipe).block()  # returns (an interrupt raises at the next read)
        finally:
            timer.join()
    with pytest.raises(PipeInterrupted):
        pipe.read_all(0)


def test_read_all_steps_takes_what_is_queued_without_a_wait():
    pipe = Pipe(1024)
    pipe.write(b"a")
    pipe.write(b"b")
    assert step_by_hand(read_all_steps(pipe, 0)) == ([b"a", b"b"], [])
    pipe.close()
    assert step_by_hand(read_all_steps(pipe, 0)) == (EOF, [])


def test_read_all_steps_parks_on_an_empty_pipe_and_reads_once_woken():
    pipe = Pipe(1024)
    steps = read_all_steps(pipe, 0)
    wait = next(steps)
    assert isinstance(wait, PipeReadable) and wait.pipe is pipe
    woken = []
    wait.arm(lambda: woken.append(1))
    pipe.write(b"woke")
    assert woken == [1]
    with pytest.raises(StopIteration) as done:
        next(steps)
    assert done.value.value == [b"woke"]


def test_read_all_steps_waits_its_linger_in_the_thread_first():
    pipe = Pipe(1024)
    timer = threading.Timer(0.05, lambda: pipe.write(b"soon"))
    timer.start()
    try:
        assert step_by_hand(read_all_steps(pipe, 5.0)) == ([b"soon"], [])
    finally:
        timer.join()


def test_read_all_steps_raises_for_an_interrupt():
    pipe = Pipe(1024)
    steps = read_all_steps(pipe, 0)
    next(steps)
    pipe.interrupt()
    with pytest.raises(PipeInterrupted):
        next(steps)


def test_read_all_steps_parks_at_once_when_enough_threads_linger(monkeypatch):
    from v2sync.common import task as task_module
    monkeypatch.setattr(task_module, "_lingering", threading.BoundedSemaphore(1))
    assert task_module._lingering.acquire(blocking=False)  # another reader lingers
    pipe = Pipe(1024)
    started = time.monotonic()
    steps = read_all_steps(pipe, 5.0)
    assert isinstance(next(steps), PipeReadable)  # no 5 s in this thread
    assert time.monotonic() - started < 1.0
    steps.close()
