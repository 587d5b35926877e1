"""A pipe's byte accounting: when a write is let in (v2ray's ``isFull``: more than the limit),
what ``wait_room`` answers, and limits 0 and unlimited (v2ray transport/pipe/impl.go). No
sockets."""
from __future__ import annotations

import threading

import pytest

from v2sync.common.errors import PipeClosed, PipeInterrupted
from v2sync.transport.pipe import EOF, UNLIMITED_ROOM, Pipe, ReadTimeout

JOIN = 5.0


def test_a_write_is_let_in_while_the_pipe_holds_exactly_its_limit():
    pipe = Pipe(4)
    assert pipe.try_write(b"abcd")
    assert pipe.buffered == 4
    assert pipe.try_write(b"e")  # 4 > 4 is false: not full yet
    assert not pipe.try_write(b"f")  # 5 > 4: full
    assert pipe.buffered == 5


def test_wait_room_counts_what_fits_under_the_limit():
    pipe = Pipe(100)
    assert pipe.wait_room() == 100
    pipe.write(b"x" * 30)
    assert pipe.wait_room() == 70
    pipe.write(b"x" * 70)
    assert pipe.wait_room() == 0  # exactly full: a write would still be let in
    pipe.write(b"x")
    with pytest.raises(ReadTimeout):
        pipe.wait_room(timeout=0)  # over the limit: as write would, it waits


def test_wait_room_waits_for_the_room_it_wants_or_an_empty_pipe():
    pipe = Pipe(100)
    pipe.write(b"x" * 90)
    assert pipe.wait_room(10, timeout=0) == 10
    with pytest.raises(ReadTimeout):
        pipe.wait_room(20, timeout=0)
    assert pipe.read(0) == b"x" * 90
    assert pipe.wait_room(500, timeout=0) == 100  # empty: even a want above the limit


def test_a_reader_taking_a_chunk_wakes_a_waiting_wait_room():
    pipe = Pipe(8)
    pipe.write(b"12345678")
    pipe.write(b"9")
    rooms = []
    waiter = threading.Thread(target=lambda: rooms.append(pipe.wait_room(4, timeout=JOIN)))
    waiter.start()
    assert pipe.read(JOIN) == b"12345678"
    waiter.join(JOIN)
    assert rooms == [7]


def test_wait_room_raises_as_write_does():
    closed = Pipe(8)
    closed.close()
    with pytest.raises(PipeClosed):
        closed.wait_room()
    full = Pipe(0)
    full.write(b"x")
    errors = []

    def waiter() -> None:
        try:
            full.wait_room(timeout=JOIN)
        except PipeInterrupted as e:
            errors.append(e)

    thread = threading.Thread(target=waiter)
    thread.start()
    full.interrupt()
    thread.join(JOIN)
    assert len(errors) == 1


def test_limit_zero_hands_over_one_chunk_at_a_time():
    """bufferSize 0 (v2ray's default on 32-bit ARM and MIPS): one chunk, of any size."""
    pipe = Pipe(0)
    assert pipe.limit == 0
    assert pipe.wait_room(timeout=0) == 0
    assert pipe.try_write(b"x" * 100_000)
    assert not pipe.try_write(b"y")
    assert pipe.read(0) == b"x" * 100_000
    assert pipe.try_write(b"y")


def test_a_negative_limit_never_fills():
    """v2ray's WithoutSizeLimit; the policy manager decides whether to allow it."""
    pipe = Pipe(-1)
    for _ in range(64):
        assert pipe.try_write(b"x" * 65536)
    assert pipe.buffered == 64 * 65536
    assert pipe.wait_room(1 << 40, timeout=0) == UNLIMITED_ROOM


def test_interrupt_resets_the_count():
    pipe = Pipe(10)
    pipe.write(b"x" * 20)
    pipe.interrupt()
    assert pipe.buffered == 0


def test_read_all_takes_every_queued_chunk_and_frees_the_room():
    pipe = Pipe(8)
    for chunk in (b"ab", b"cdef", b"ghi"):
        pipe.write(chunk)
    assert pipe.read_all(0) == [b"ab", b"cdef", b"ghi"]
    assert pipe.buffered == 0
    assert pipe.wait_room(timeout=0) == 8
    pipe.write(b"j")
    pipe.close()
    assert pipe.read_all(0) == [b"j"]
    assert pipe.read_all(0) is EOF
    with pytest.raises(ReadTimeout):
        Pipe(8).read_all(0)
