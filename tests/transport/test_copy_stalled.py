"""A copy into a pipe whose reader has stalled: what it reads, and where the bytes wait.

Socket-free: ``EndlessSource`` stands in for a connection (the copy loops only call
``read(n)`` on it) and hands out as many bytes as each read asks for, like a socket whose
peer sends faster than the proxy reads. Bytes handed out minus bytes in the pipe is what
the copy loop holds outside the pipe.
"""
from __future__ import annotations

import threading
import time
from typing import List

import pytest

from v2sync.common.task import drive
from v2sync.transport.copy import (PIPE_READ_FLOOR, ReadSizer, adaptive_reads,
                                   conn_drain, copy_conn_to_pipe_steps, read_budget,
                                   room_wanted)
from v2sync.transport.internet.conn import RELAY_READ_SIZE
from v2sync.transport.pipe import EOF, Pipe

KIB = 1024
JOIN = 5.0
SETTLE_POLLS = 10       # the copy is blocked once nothing changed for this many polls...
POLL_SECONDS = 0.05
SETTLE_DEADLINE = 10.0  # ...and the test gives up waiting (and fails) after this long


class EndlessSource:
    """``read(n)`` returns ``n`` pattern bytes until ``finish()``, then EOF (``b""``)."""

    def __init__(self) -> None:
        self.asked: List[int] = []
        self.handed_out = 0
        self.finished = threading.Event()
        self._lock = threading.Lock()

    def read(self, n: int) -> bytes:
        if self.finished.is_set():
            return b""
        with self._lock:
            data = bytes((self.handed_out + i) % 251 for i in range(min(n, 251))) * (n // 251)
            data += bytes((self.handed_out + len(data) + i) % 251 for i in range(n - len(data)))
            self.asked.append(n)
            self.handed_out += n
        return data

    def finish(self) -> None:
        self.finished.set()


class NullTimer:
    def update(self) -> None:
        pass


def copy_conn_to_pipe(source, pipe: Pipe) -> int:
    """The relay's socket-to-pipe copy run to the end in this thread (no waiter)."""
    return drive(copy_conn_to_pipe_steps(source, pipe, NullTimer(), None))


def wait_until_settled(source: EndlessSource, pipe: Pipe) -> None:
    """Wait (bounded) until every byte handed out is in the pipe and stays so: the copy is
    then blocked waiting for room. Holding a chunk outside the pipe never settles."""
    deadline = time.monotonic() + SETTLE_DEADLINE
    quiet = 0
    last = -1
    while quiet < SETTLE_POLLS and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        state = source.handed_out
        settled = state == last and state == pipe.buffered
        quiet = quiet + 1 if settled else 0
        last = state


@pytest.mark.parametrize("limit", [0, 4 * KIB, 100 * KIB, 512 * KIB, 2048 * KIB])
def test_a_stalled_pipe_stops_the_reads_with_nothing_held_outside_it(limit: int) -> None:
    pipe = Pipe(limit, "down")
    source = EndlessSource()
    copier = threading.Thread(target=copy_conn_to_pipe, args=(source, pipe))
    copier.start()
    try:
        wait_until_settled(source, pipe)
        held_outside = source.handed_out - pipe.buffered
        assert held_outside == 0, f"a blocked copy holds {held_outside} bytes outside the pipe"
        assert pipe.buffered <= limit + PIPE_READ_FLOOR
        assert max(source.asked) <= max(limit, PIPE_READ_FLOOR)
    finally:
        pipe.interrupt()
        source.finish()
        copier.join(JOIN)
    assert not copier.is_alive()


def test_bytes_arrive_whole_and_in_order_through_a_small_pipe() -> None:
    pipe = Pipe(8 * KIB, "down")
    source = EndlessSource()
    received = bytearray()

    def consume() -> None:
        while len(received) < 3 * RELAY_READ_SIZE:
            chunk = pipe.read(JOIN)
            assert chunk is not EOF
            received.extend(chunk)
        source.finish()
        while pipe.read(JOIN) is not EOF:
            pass

    consumer = threading.Thread(target=consume)
    consumer.start()
    copied = copy_conn_to_pipe(source, pipe)
    pipe.close()
    consumer.join(JOIN)
    assert copied == source.handed_out
    expected = bytes(i % 251 for i in range(len(received)))
    assert bytes(received) == expected
    assert max(source.asked) <= PIPE_READ_FLOOR


class RecordingSink:
    """Stands in for the connection a pipe is copied to; records each stream write."""

    def __init__(self) -> None:
        self.writes: List[List[bytes]] = []

    def write(self, data: bytes) -> None:
        self.writes.append([data])

    def write_parts(self, parts: List[bytes]) -> None:
        self.writes.append(list(parts))


def test_the_writer_takes_every_queued_chunk_in_one_write() -> None:
    """So the pipe's room comes back whole and the next read fills it (not half of it)."""
    pipe = Pipe(512 * KIB, "down")
    for chunk in (b"a" * 300 * KIB, b"b" * 200 * KIB, b"c"):
        pipe.write(chunk)
    pipe.close()
    sink = RecordingSink()
    assert conn_drain(pipe, sink).step(NullTimer()) is None  # type: ignore[arg-type]
    assert sum(len(part) for write in sink.writes for part in write) == 500 * KIB + 1
    assert sink.writes == [[b"a" * 300 * KIB, b"b" * 200 * KIB, b"c"]]


def test_reads_end_quietly_when_the_pipe_is_interrupted() -> None:
    pipe = Pipe(4 * KIB, "down")
    pipe.interrupt()
    assert list(adaptive_reads(EndlessSource(), pipe)) == []


def test_a_read_cut_short_by_the_pipe_that_came_back_full_keeps_the_size() -> None:
    sizer = ReadSizer()
    for _ in range(4):
        sizer.next_size(sizer.size)
    assert sizer.size == RELAY_READ_SIZE
    assert sizer.next_size(PIPE_READ_FLOOR, PIPE_READ_FLOOR) == RELAY_READ_SIZE
    assert sizer.next_size(100, PIPE_READ_FLOOR) == RELAY_READ_SIZE // 4  # scarce: shrink


def test_read_budget_is_the_room_with_a_floor() -> None:
    assert read_budget(RELAY_READ_SIZE, 300 * KIB) == 300 * KIB
    assert read_budget(RELAY_READ_SIZE, 0) == PIPE_READ_FLOOR
    assert read_budget(4 * KIB, 300 * KIB) == 4 * KIB
    assert read_budget(RELAY_READ_SIZE, 1 << 62) == RELAY_READ_SIZE


def test_room_wanted_is_a_floor_or_half_a_small_limit() -> None:
    assert room_wanted(RELAY_READ_SIZE, 512 * KIB) == PIPE_READ_FLOOR
    assert room_wanted(4 * KIB, 512 * KIB) == 4 * KIB
    assert room_wanted(RELAY_READ_SIZE, 4 * KIB) == 2 * KIB
    assert room_wanted(RELAY_READ_SIZE, 0) == 0
