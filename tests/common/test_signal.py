"""The timer wheel: idle expiry, reset by activity, shrinking timeouts."""
import threading
import time

from v2sync.common.signal import MIN_COMPACT, TimerWheel


def test_timer_fires_after_idle_and_only_once():
    wheel = TimerWheel()
    wheel.start()
    fired = []
    try:
        wheel.new_timer(0.1, lambda: fired.append(time.monotonic()))
        time.sleep(0.5)
        assert len(fired) == 1
    finally:
        wheel.stop()


def test_activity_postpones_expiry():
    wheel = TimerWheel()
    wheel.start()
    fired = threading.Event()
    try:
        timer = wheel.new_timer(0.3, fired.set)
        for _ in range(6):  # 0.6 s of activity, every 0.1 s
            time.sleep(0.1)
            timer.update()
        assert not fired.is_set()
        assert fired.wait(2)
    finally:
        wheel.stop()


def test_set_timeout_shrinks_and_zero_fires_now():
    wheel = TimerWheel()
    wheel.start()
    fired = threading.Event()
    try:
        timer = wheel.new_timer(60, fired.set)
        timer.set_timeout(0.05)
        assert fired.wait(2)
        other = threading.Event()
        t2 = wheel.new_timer(60, other.set)
        t2.set_timeout(0)
        assert other.is_set()
    finally:
        wheel.stop()


def test_cancelled_timer_never_fires():
    wheel = TimerWheel()
    wheel.start()
    fired = threading.Event()
    try:
        wheel.new_timer(0.05, fired.set).cancel()
        assert not fired.wait(0.3)
    finally:
        wheel.stop()


def test_finished_timers_do_not_pile_up_in_the_heap():
    """Each connection files a connIdle entry (300 s) and later shorter ones; the long ones
    must not outlive their connections until they are due."""
    wheel = TimerWheel()  # not started: nothing pops, only compaction can shrink the heap
    live = []
    for i in range(10 * MIN_COMPACT):
        timer = wheel.new_timer(300, lambda: None)
        timer.set_timeout(1)  # a second, earlier entry, as the relay's linger does
        if i % 100 == 0:
            live.append(timer)
        else:
            timer.cancel()
    assert len(wheel._heap) <= 2 * MIN_COMPACT + 2 * len(live)
    assert len(wheel) == len(live)


def test_rescheduling_later_files_no_new_entry():
    wheel = TimerWheel()
    timer = wheel.new_timer(1, lambda: None)
    for _ in range(100):
        timer.update()
        timer.set_timeout(2)  # later than the filed deadline: the filed entry re-files itself
    assert len(wheel._heap) == 1 and len(wheel) == 1


def test_a_timer_postponed_by_set_timeout_fires_once_at_its_new_deadline():
    wheel = TimerWheel()
    wheel.start()
    fired = []
    try:
        timer = wheel.new_timer(0.05, lambda: fired.append(time.monotonic()))
        started = time.monotonic()
        timer.set_timeout(0.3)
        time.sleep(0.6)
        assert len(fired) == 1 and fired[0] - started >= 0.3
    finally:
        wheel.stop()
