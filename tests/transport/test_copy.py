"""transport.copy's read sizer (socket-free; the copy loops run over real sockets in
tests/proxy/test_relay.py)."""
from __future__ import annotations

from v2sync.transport.copy import FIRST_READ_SIZE, MIN_READ_SIZE, ReadSizer
from v2sync.transport.internet.conn import RELAY_READ_SIZE


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
