"""``GoReads``: the sizes of 4.34's reads of a connection (``common/buf``: ``ReadVReader``'s
``allocStrategy`` on plain TCP, ``SingleReader`` on any other layer), socket-free."""
from __future__ import annotations

from typing import List, Sequence

from v2sync.transport.internet.conn import GO_BUFFER_SIZE as B
from v2sync.transport.internet.conn import GoReads


def sizes(reads: GoReads, got: Sequence[int]) -> List[int]:
    """The size of each read, when each brings ``got[i]`` bytes."""
    out = []
    for n in got:
        out.append(reads.size())
        reads.took(n)
    return out + [reads.size()]


def test_plain_tcp_grows_by_four_while_reads_come_back_full_up_to_32_buffers() -> None:
    assert sizes(GoReads(raw=True), [B, 4 * B, 16 * B, 32 * B]) == \
        [B, 4 * B, 16 * B, 32 * B, 32 * B]


def test_plain_tcp_shrinks_to_the_buffers_the_last_read_filled() -> None:
    # 4 buffers asked, 3000 bytes came: 2 buffers; then 1 byte: 1 buffer, read alone.
    assert sizes(GoReads(raw=True), [B, 3000, 1, B - 1]) == [B, 4 * B, 2 * B, B, B]


def test_a_first_read_short_of_a_buffer_keeps_one() -> None:
    assert sizes(GoReads(raw=True), [100, 2047, B]) == [B, B, B, 4 * B]


def test_other_layers_read_one_buffer_each_time() -> None:
    assert sizes(GoReads(raw=False), [B, B, 5]) == [B, B, B, B]


def test_a_first_read_apart_leaves_the_strategy_fresh() -> None:
    """VLESS and Trojan: ``first.ReadFrom(conn)``, then a new ``BufferedReader``."""
    assert sizes(GoReads(raw=True, first_apart=True), [B, B, 4 * B]) == [B, B, 4 * B, 16 * B]
