"""transport.copy's read sizer (socket-free; the copy loops run over real sockets in
tests/proxy/test_relay.py)."""
from __future__ import annotations

import socket
import threading
from typing import List

import pytest

from v2sync.common.net import Destination
from v2sync.common.task import PARKED
from v2sync.transport import copy as copy_module
from v2sync.transport.copy import FIRST_READ_SIZE, MIN_READ_SIZE, PipeDrain, ReadSizer
from v2sync.transport.internet.conn import RELAY_READ_SIZE, Connection, WrappedConnection
from v2sync.transport.internet.readiness import Readable, ReadWaiter
from v2sync.transport.pipe import Pipe


def test_full_reads_grow_the_size_to_the_ceiling_and_no_further() -> None:
    sizer = ReadSizer()
    sizes = [sizer.size]
    for _ in range(10):
        sizes.append(sizer.next_size(sizer.size))
    assert sizes[:5] == [FIRST_READ_SIZE, 16384, 65536, 262144, RELAY_READ_SIZE]
    assert sizes[-1] == RELAY_READ_SIZE


def test_small_reads_shrink_the_size_back_to_the_floor() -> None:
    sizer = ReadSizer()
    for _ in range(4):
        sizer.next_size(sizer.size)
    assert sizer.size == RELAY_READ_SIZE
    for _ in range(20):  # an interactive tail: a few bytes per read
        sizer.next_size(10)
    assert sizer.size == MIN_READ_SIZE


def test_a_small_first_read_drops_the_size_at_once() -> None:
    """A connection that said "hello" and went idle parks with a small buffer."""
    sizer = ReadSizer()
    assert sizer.next_size(5) == FIRST_READ_SIZE // 4
    assert sizer.next_size(5) == MIN_READ_SIZE


def test_reads_between_a_quarter_and_full_keep_the_size() -> None:
    sizer = ReadSizer()
    sizer.next_size(FIRST_READ_SIZE)
    assert sizer.size == 16384
    assert sizer.next_size(8192) == 16384  # half full: neither grow nor shrink
    assert sizer.next_size(4095) == 4096   # under a quarter: a quarter


def test_a_nearly_full_read_grows_the_size() -> None:
    """A layer (TLS, WebSocket) hands back a little less payload than it read: framing."""
    sizer = ReadSizer()
    sizer.next_size(FIRST_READ_SIZE)
    assert sizer.size == 16384
    assert sizer.next_size(16384 - 16384 // 16) == 65536  # within 1/16 of full: grows
    assert sizer.next_size(65536 - 65536 // 16 - 1) == 65536  # further off: kept


# -- PipeDrain: the pipe -> connection direction as steps that may park ----------------------

class _Timer:
    def __init__(self) -> None:
        self.updates = 0

    def update(self) -> None:
        self.updates += 1


def test_a_drain_parks_on_an_empty_pipe_and_carries_on_where_it_left() -> None:
    pipe = Pipe(1024)
    sent: List[List[bytes]] = []
    ends: List[int] = []
    drain = PipeDrain(pipe, sent.append, lambda: ends.append(len(sent)))
    timer = _Timer()
    wakes: List[int] = []
    pipe.write(b"a")
    copy_module.PARK_AFTER, saved = 0.0, copy_module.PARK_AFTER
    try:
        assert drain.step(timer, lambda: wakes.append(1)) is PARKED
        assert sent == [[b"a"]] and wakes == []
        pipe.write(b"b")
        pipe.write(b"c")
        assert wakes == [1]  # one wake for the first event
        assert drain.step(timer, lambda: wakes.append(2)) is PARKED
        pipe.close()
        assert wakes == [1, 2]
        assert drain.step(timer, lambda: wakes.append(3)) is None
    finally:
        copy_module.PARK_AFTER = saved
    assert sent == [[b"a"], [b"b", b"c"]] and ends == [2] and timer.updates == 2


def test_a_drain_without_a_waker_blocks_until_eof() -> None:
    pipe = Pipe(1024)
    sent: List[List[bytes]] = []
    pipe.write(b"x")
    pipe.close()
    assert PipeDrain(pipe, sent.append).step(_Timer()) is None
    assert sent == [[b"x"]]


# -- parkable reads: an idle reader yields a wait (transport/internet/readiness.py) -----------

_REMOTE = Destination.tcp("127.0.0.1", 9)


@pytest.fixture
def pair():
    """A connection over one end of a socket pair, and the other end (its peer)."""
    a, b = socket.socketpair()
    conn = Connection(a, remote=_REMOTE)
    try:
        yield conn, b
    finally:
        conn.close()
        b.close()


@pytest.fixture
def waiter():
    waiter = ReadWaiter("test-waiter")
    try:
        yield waiter
    finally:
        waiter.stop()


def test_an_idle_reader_yields_a_readable_wait_then_reads_what_came(pair, waiter) -> None:
    conn, peer = pair
    reads = copy_module.parkable_reads(conn, None, waiter)
    wait = next(reads)  # nothing came within PARK_AFTER
    assert isinstance(wait, Readable) and wait.sock is conn.sock
    peer.sendall(b"hello")
    assert next(reads) == b"hello"  # readable now: no second wait
    peer.sendall(b"more")
    assert next(reads) == b"more"
    peer.close()
    assert list(reads) == []  # EOF ends the reads


def test_bytes_a_layer_holds_are_read_without_a_wait(pair, waiter) -> None:
    conn, _ = pair
    layer = WrappedConnection(conn, pending=b"held")
    reads = copy_module.parkable_reads(layer, None, waiter)
    assert next(reads) == b"held"  # no wait first, though the socket is silent
    assert isinstance(next(reads), Readable)
    assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) != bytes(16)


def test_without_a_waiter_reads_block_and_never_yield_a_wait(pair) -> None:
    conn, peer = pair
    timer = threading.Timer(copy_module.PARK_AFTER * 3, peer.close)
    try:
        timer.start()
        assert list(copy_module.adaptive_reads(conn)) == []
    finally:
        timer.join()
