"""Mux.cool frames (common/mux/encoding.py): whole, byte by byte, with trailers, garbage."""
import pytest
from hypothesis import given, strategies as st

from v2sync.common.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from v2sync.common.mux.encoding import (MAX_STREAM_CHUNK, MUX_COOL_ADDRESS, OPTION_DATA,
                                        OPTION_ERROR, Frame, Status, encode_end, encode_frame,
                                        is_mux_destination, parse_frame, split_stream)
from v2sync.common.net import Address, Destination, Network
from tests.support.codec_checks import assert_decodes

TCP_TARGET = Destination(Address.parse("example.com"), 80, Network.TCP)
UDP_TARGET = Destination(Address.parse("8.8.8.8"), 53, Network.UDP)

CASES = [
    # (frame, wire) -- the layout of frame.go WriteTo, field by field
    (Frame(1, Status.NEW, OPTION_DATA, TCP_TARGET, b"hi"),
     "0014" "0001" "01" "01" "01" "0050" "02" "0b" + b"example.com".hex() + "0002" "6869"),
    (Frame(7, Status.NEW, 0, UDP_TARGET), "000c" "0007" "01" "00" "02" "0035" "01" "08080808"),
    (Frame(2, Status.KEEP, OPTION_DATA, None, b"abc"), "0004" "0002" "02" "01" "0003" "616263"),
    (Frame(2, Status.END, OPTION_ERROR), "0004" "0002" "03" "02"),
    (Frame(9, Status.KEEP_ALIVE), "0004" "0009" "04" "00"),
]


@pytest.mark.parametrize("frame,wire", CASES)
def test_frames_round_trip(frame: Frame, wire: str) -> None:
    raw = bytes.fromhex(wire)
    assert encode_frame(frame.session_id, frame.status, frame.data, frame.target,
                        frame.has_error) == raw
    assert_decodes(parse_frame, raw, frame, b"\x00\x04tail")


def test_metadata_past_the_parsed_fields_is_skipped() -> None:
    # frame.go reads metaLen bytes whole, then parses inside them
    raw = bytes.fromhex("0006" "0003" "02" "00" "beef") + b"next"
    assert parse_frame(raw) == (Frame(3, Status.KEEP), 8)


def test_start_walks_a_buffer_of_frames() -> None:
    raw = encode_end(1) + encode_frame(2, Status.KEEP, b"x")
    frame, used = parse_frame(raw, 6)
    assert frame == Frame(2, Status.KEEP, OPTION_DATA, None, b"x") and used == 9


@pytest.mark.parametrize("wire,what", [
    ("0201" + "00" * 513, "invalid metadata length 513"),
    ("0003" "000102", "too short"),
    ("0004" "0001" "09" "00", "unknown status 9"),
    ("0006" "0001" "01" "00" "0100", "New metadata"),
    ("0008" "0001" "01" "00" "01" "0050" "09", "unknown address type"),
    ("0009" "0001" "01" "00" "01" "0050" "02" "05", "address runs past the metadata"),
    ("000c" "0001" "01" "00" "07" "0035" "01" "08080808", "unknown network type 7"),
])
def test_garbage_is_refused(wire: str, what: str) -> None:
    with pytest.raises(RemoteProtocolError, match=what):
        parse_frame(bytes.fromhex(wire))


def test_512_bytes_of_metadata_are_allowed() -> None:
    raw = bytes.fromhex("0200" "0001" "02" "00") + bytes(508)
    assert parse_frame(raw) == (Frame(1, Status.KEEP), 514)


def test_unsendable_frames_are_the_callers_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(0x10000, Status.KEEP, b"")
    with pytest.raises(LocalProtocolError):
        encode_frame(1, Status.NEW, b"x")  # no target
    with pytest.raises(LocalProtocolError):
        encode_frame(1, Status.KEEP, bytes(0x10000))


def test_stream_data_is_cut_at_8_kib() -> None:
    data = bytes(range(256)) * 100
    pieces = split_stream(data)
    assert [len(p) for p in pieces] == [MAX_STREAM_CHUNK] * 3 + [len(data) - 3 * MAX_STREAM_CHUNK]
    assert b"".join(pieces) == data


def test_the_mux_destination_is_the_domain_whatever_the_port() -> None:
    assert is_mux_destination(Destination(MUX_COOL_ADDRESS, 0))
    assert is_mux_destination(Destination(MUX_COOL_ADDRESS, 9527))
    assert not is_mux_destination(Destination(Address.parse("v1.mux.cool.example"), 9527))


@given(st.binary(max_size=600))
def test_anything_parses_needs_more_or_is_a_protocol_error(data: bytes) -> None:
    try:
        result = parse_frame(data)
    except ProtocolError:
        return
    if result is not None:
        frame, used = result
        assert 6 <= used <= len(data)
        assert isinstance(frame.status, Status)


_HEADS = st.builds(lambda meta, sid, status, option, rest: (
    meta.to_bytes(2, "big") + sid.to_bytes(2, "big") + bytes([status, option]) + rest),
    st.integers(0, 12), st.integers(0, 0xFFFF), st.integers(0, 6), st.integers(0, 3),
    st.binary(max_size=16))


@given(st.one_of(_HEADS, st.binary(max_size=40)), st.integers(min_value=0, max_value=3))
def test_the_one_unpack_path_reads_as_the_cursor_path(raw: bytes, start: int) -> None:
    """Frames other than New take a shortcut (a flood of tiny frames cost ~3.5 µs each;
    found by a review): it must say what the general path says, for any bytes."""
    from v2sync.common.mux.encoding import _parse_any

    def outcome(parse):
        try:
            return parse(raw, min(start, len(raw)))
        except ProtocolError as e:
            return type(e)
    assert outcome(parse_frame) == outcome(_parse_any)
