"""Mux.cool's shared pieces without sockets: the frame reader over a pipe (merging, EOF
inside a frame), the session table's limits, and session writers' framing."""
import pytest

from v2sync.common.errors import RemoteProtocolError
from v2sync.common.mux.encoding import (MAX_STREAM_CHUNK, OPTION_DATA, Frame, Status,
                                        encode_end, encode_frame, parse_frame)
from v2sync.common.mux.session import (FrameReader, FrameWriter, MuxSession, SessionTable,
                                       SessionWriter)
from v2sync.common.net import Address, Destination, Network
from v2sync.transport.link import new_link_pair
from v2sync.transport.pipe import EOF, Pipe

TARGET = Destination(Address.parse("127.0.0.1"), 80, Network.TCP)


def _pipe(*chunks: bytes) -> Pipe:
    pipe = Pipe(-1)
    for chunk in chunks:
        pipe.write(chunk)
    pipe.close()
    return pipe


def _frames(data: bytes):
    out, pos = [], 0
    while pos < len(data):
        frame, used = parse_frame(data, pos)
        out.append(frame)
        pos += used
    return out


def test_stream_keeps_of_one_session_merge_and_others_do_not() -> None:
    wire = b"".join([encode_frame(1, Status.KEEP, b"a" * 10), encode_frame(1, Status.KEEP, b"b"),
                     encode_frame(2, Status.KEEP, b"c"), encode_frame(2, Status.KEEP, b"d"),
                     encode_end(1)])
    reader = FrameReader(_pipe(wire[:7], wire[7:]), is_stream=lambda sid: sid == 1)
    got = [reader.next() for _ in range(5)]
    assert got[0] == Frame(1, Status.KEEP, OPTION_DATA, None, b"a" * 10 + b"b")
    assert got[1:4] == [Frame(2, Status.KEEP, OPTION_DATA, None, b"c"),
                        Frame(2, Status.KEEP, OPTION_DATA, None, b"d"), Frame(1, Status.END)]
    assert got[4] is None  # clean EOF


def test_bare_keep_alives_are_read_past() -> None:
    """They do nothing, in 4.34 too: a flood of them stalled every stream behind its
    handling (found by a review). One with data is still handed on (its data dropped)."""
    keep_alive = encode_frame(0, Status.KEEP_ALIVE)
    wire = keep_alive * 1000 + encode_frame(2, Status.KEEP, b"x") + keep_alive
    reader = FrameReader(_pipe(wire[:100], wire[100:]))
    assert reader.next() == Frame(2, Status.KEEP, OPTION_DATA, None, b"x")
    assert reader.next() is None
    with_data = encode_frame(0, Status.KEEP_ALIVE, b"?")
    assert FrameReader(_pipe(with_data)).next() == Frame(0, Status.KEEP_ALIVE, OPTION_DATA,
                                                          None, b"?")


def test_eof_inside_a_frame_is_an_error() -> None:
    reader = FrameReader(_pipe(encode_frame(3, Status.KEEP, b"xyz")[:-1]))
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        reader.next()


def test_table_ids_count_and_close() -> None:
    table = SessionTable()
    link = new_link_pair()[0]
    first, second = table.allocate(link, False), table.allocate(link, True)
    assert (first.id, second.id, table.count, table.size()) == (1, 2, 2, 2)
    assert table.remove(first) and not table.remove(first)
    assert not table.close_if_empty()
    assert table.close() == [second] and table.allocate(link, False) is None
    assert not table.add(MuxSession(9, link, False))


def _written(pipe: Pipe) -> bytes:
    pipe.close()
    out = b""
    while (chunk := pipe.read()) is not EOF:
        out += chunk
    return out


def test_client_writer_sends_new_then_keep_cut_at_8_kib_then_end() -> None:
    out = Pipe(-1)
    session = MuxSession(4, new_link_pair()[0], packet=False)
    writer = SessionWriter(FrameWriter(out), session, TARGET)
    writer.write([b"x" * (MAX_STREAM_CHUNK + 5)])
    writer.close(error=True)
    frames = _frames(_written(out))
    assert [f.status for f in frames] == [Status.NEW, Status.KEEP, Status.END]
    assert frames[0].target == TARGET and len(frames[0].data) == MAX_STREAM_CHUNK
    assert frames[1].data == b"x" * 5 and frames[2].has_error


def test_packet_writer_sends_one_frame_per_datagram_and_drops_oversized_ones() -> None:
    out = Pipe(-1)
    session = MuxSession(5, new_link_pair()[0], packet=True)
    writer = SessionWriter(FrameWriter(out), session)  # a server's: Keep from the start
    writer.write([b"one", b"z" * 3000, b"two"])
    frames = _frames(_written(out))
    assert [(f.status, f.data) for f in frames] == [(Status.KEEP, b"one"), (Status.KEEP, b"two")]
