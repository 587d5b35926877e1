"""WebSocket framing: masking against a naive reference, round trips at every length class,
streaming in any chunking, control frames, every protocol error, and a Hypothesis property."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from v2sync.common.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from v2sync.transport.internet.websocket.frames import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, FrameDecoder, FrameError,
    encode_close,
    encode_frame, frame_parts, mask_bytes)

KEY = b"\x12\x34\x56\x78"
LENGTHS = [0, 1, 125, 126, 65535, 65536, 200000]


def naive_mask(data: bytes, key: bytes, offset: int) -> bytes:
    return bytes(b ^ key[(offset + i) % 4] for i, b in enumerate(data))


def data_of(events) -> bytes:
    assert all(kind == "data" for kind, *_ in events), events
    return b"".join(event[1] for event in events)


def merged(events) -> list:
    """Events with neighbouring data joined: data is a stream, however it was cut."""
    out: list = []
    for event in events:
        if event[0] == "data" and out and out[-1][0] == "data":
            out[-1] = ("data", out[-1][1] + event[1])
        else:
            out.append(event)
    return out


def feed_chunks(decoder: FrameDecoder, wire: bytes, sizes) -> list:
    events, pos = [], 0
    while pos < len(wire):
        step = next(sizes)
        events += decoder.feed(wire[pos:pos + step])
        pos += step
    return events


def header(first: int, second: int, extra: bytes = b"") -> bytes:
    return bytes((first, second)) + extra


# -- masking ----------------------------------------------------------------------------------

def test_mask_matches_naive_reference_and_round_trips():
    rng = random.Random(6455)
    for size in range(101):
        data, key = rng.randbytes(size), rng.randbytes(4)
        for offset in range(4):
            masked = mask_bytes(data, key, offset)
            assert masked == naive_mask(data, key, offset)
            assert mask_bytes(masked, key, offset) == data
            assert mask_bytes(data, key, offset + 4) == masked  # the offset is taken mod 4


def test_mask_empty_and_split_offsets_agree():
    assert mask_bytes(b"", KEY) == b""
    data = bytes(range(256)) * 256
    whole = mask_bytes(data, KEY)
    assert mask_bytes(data[:1001], KEY) + mask_bytes(data[1001:], KEY, 1001) == whole


# -- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", LENGTHS)
@pytest.mark.parametrize("masked", [False, True])
def test_round_trip_whole(size, masked):
    payload = (bytes(range(251)) * (size // 251 + 1))[:size]
    wire = encode_frame(OP_BINARY, payload, KEY if masked else None)
    assert data_of(FrameDecoder(expect_masked=masked).feed(wire)) == payload
    assert len(wire) == len(payload) + (2 if size < 126 else 4 if size < 65536 else 10) \
        + (4 if masked else 0)


@pytest.mark.parametrize("size", LENGTHS)
@pytest.mark.parametrize("masked", [False, True])
def test_frame_parts_are_the_frame_split_before_the_payload(size, masked):
    payload = (bytes(range(251)) * (size // 251 + 1))[:size]
    head, body = frame_parts(OP_BINARY, payload, KEY if masked else None)
    assert head + body == encode_frame(OP_BINARY, payload, KEY if masked else None)
    assert len(body) == size  # the header (and mask key) alone in the first part
    if not masked:
        assert body is payload  # sent as it is: no copy


def test_length_encodings_on_the_wire():
    assert encode_frame(OP_BINARY, b"ab") == b"\x82\x02ab"
    assert encode_frame(OP_TEXT, b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert encode_frame(OP_BINARY, b"x" * 65536)[:10] == b"\x82\x7f" + (65536).to_bytes(8, "big")
    assert encode_frame(OP_BINARY, b"ab", KEY) == b"\x82\x82" + KEY + naive_mask(b"ab", KEY, 0)


@pytest.mark.parametrize("masked", [False, True])
def test_whole_byte_at_a_time_and_random_chunks_agree(masked):
    payloads = [bytes([n % 251]) * n for n in (0, 1, 125, 126, 300, 70000)]
    wire = b"".join(encode_frame(OP_BINARY, p, KEY if masked else None) for p in payloads)
    expected = b"".join(payloads)
    assert data_of(FrameDecoder(masked).feed(wire)) == expected
    assert data_of(feed_chunks(FrameDecoder(masked), wire, iter(lambda: 1, None))) == expected
    rng = random.Random(1)
    for _ in range(5):
        sizes = iter(lambda: rng.randint(1, 9000), None)
        assert data_of(feed_chunks(FrameDecoder(masked), wire, sizes)) == expected


def test_big_frame_streams_pieces_before_it_ends():
    payload = bytes(range(256)) * 4096  # 1 MiB
    wire = encode_frame(OP_BINARY, payload, KEY)
    decoder = FrameDecoder(expect_masked=True)
    pieces = [decoder.feed(wire[pos:pos + 4096]) for pos in range(0, len(wire), 4096)]
    assert all(len(events) == 1 for events in pieces)  # a piece per feed, none held back
    assert data_of([e for events in pieces for e in events]) == payload


def test_trailing_frames_in_the_same_feed():
    wire = (encode_frame(OP_BINARY, b"one", KEY) + encode_frame(OP_PING, b"p", KEY)
            + encode_frame(OP_TEXT, b"two", KEY))
    events = FrameDecoder(expect_masked=True).feed(wire)
    assert events == [("data", b"one"), ("ping", b"p"), ("data", b"two")]


def test_empty_data_frame_yields_nothing():
    decoder = FrameDecoder(expect_masked=False)
    assert decoder.feed(encode_frame(OP_BINARY, b"")) == []
    assert decoder.feed(encode_frame(OP_BINARY, b"z")) == [("data", b"z")]


def test_fragmented_message_with_interleaved_ping():
    wire = (header(OP_TEXT, 2) + b"ab" + header(0x80 | OP_PING, 0) + header(OP_CONT, 1) + b"c"
            + header(0x80 | OP_CONT, 1) + b"d" + encode_frame(OP_BINARY, b"e"))
    events = FrameDecoder(expect_masked=False).feed(wire)
    assert merged(events) == [("data", b"ab"), ("ping", b""), ("data", b"cde")]


# -- control frames ---------------------------------------------------------------------------

def test_ping_pong_close_events():
    decoder = FrameDecoder(expect_masked=True)
    wire = (encode_frame(OP_PING, b"hi", KEY) + encode_frame(OP_PONG, b"yo", KEY)
            + encode_close(1001, b"bye", KEY))
    assert [decoder.feed(wire[i:i + 1]) for i in range(len(wire))][-1] == [("close", 1001, b"bye")]
    assert FrameDecoder(True).feed(wire) == [("ping", b"hi"), ("pong", b"yo"),
                                             ("close", 1001, b"bye")]


def test_close_without_payload_and_default_code():
    assert FrameDecoder(False).feed(encode_frame(OP_CLOSE, b"")) == [("close", None, b"")]
    assert encode_close() == b"\x88\x02\x03\xe8"
    assert FrameDecoder(False).feed(encode_close()) == [("close", 1000, b"")]


def test_feed_nothing_after_close_is_fine():
    decoder = FrameDecoder(False)
    decoder.feed(encode_close())
    assert decoder.feed(b"") == []


# -- errors -----------------------------------------------------------------------------------

# The texts are the reasons of the close frame 4.34 (Debian's build: its gorilla) sends for
# each; tests/scenarios/test_transport_bad_input.py compares them with 4.34's on the wire.
@pytest.mark.parametrize("wire, expect_masked, message", [
    (header(0x80 | 0x40 | OP_BINARY, 0), False, "^websocket: RSV1 set$"),
    (header(0x80 | 0x30 | OP_BINARY, 0), False, "^websocket: RSV2 set, RSV3 set$"),
    (header(0x80 | 0x03, 0), False, "^websocket: bad opcode 3$"),
    (header(0x80 | 0x0B, 0), False, "^websocket: bad opcode 11$"),
    (header(0x80 | OP_PING, 126, b"\x00\x7e"), False, "^websocket: len > 125 for control$"),
    (header(0x80 | OP_PING, 126, b"\x00\x05"), False, "len > 125 for control"),  # 7 bits
    (header(OP_PING, 0), False, "^websocket: FIN not set on control$"),
    (header(0x80 | OP_BINARY, 1) + b"x", True, "^websocket: bad MASK$"),
    (header(0x80 | OP_BINARY, 0x81) + KEY + b"x", False, "^websocket: bad MASK$"),
    (header(0xC0 | OP_BINARY, 1) + b"x", True, "^websocket: RSV1 set, bad MASK$"),
    (header(0x80 | OP_BINARY, 127, b"\x80" + bytes(7)), False, "top bit"),
    (header(0x80 | OP_BINARY, 127, (1 << 20 | 1).to_bytes(8, "big")), False, "v2sync"),
    (header(0x80 | OP_CONT, 1) + b"x", False, "^websocket: continuation after FIN$"),
    (header(OP_BINARY, 1) + b"x" + header(0x80 | OP_TEXT, 0), False,
     "^websocket: data before FIN$"),
    (encode_frame(OP_CLOSE, (1005).to_bytes(2, "big")), False, "^websocket: bad close code 1005$"),
    (encode_close(999), False, "^websocket: bad close code 999$"),
    (encode_close(1014), False, "^websocket: bad close code 1014$"),
    (encode_close(1000, b"\xff"), False, "^websocket: invalid utf8 payload in close frame$"),
    (encode_close() + encode_frame(OP_BINARY, b"late"), False, "after a close"),
])
def test_protocol_errors(wire, expect_masked, message):
    with pytest.raises(RemoteProtocolError, match=message):
        FrameDecoder(expect_masked).feed(wire)


@pytest.mark.parametrize("payload", [b"", b"\x03"])
def test_a_close_of_under_2_bytes_has_no_status(payload):
    """gorilla reads a 1-byte close payload as no status too (and echoes an empty close)."""
    assert FrameDecoder(False).feed(encode_frame(OP_CLOSE, payload)) == [("close", None, b"")]
    assert encode_close(None) == encode_close(1005) == bytes([0x88, 0])


def test_frame_errors_carry_gorillas_close():
    with pytest.raises(FrameError) as info:
        FrameDecoder(True).feed(header(0x80 | OP_BINARY, 1) + b"x")
    assert (info.value.close_code, info.value.reason) == (1002, "bad MASK")
    with pytest.raises(FrameError) as info:
        FrameDecoder(False).feed(header(0x80 | OP_BINARY, 127, b"\x80" + bytes(7)))
    assert info.value.close_code is None  # gorilla's read limit: no close frame of its own


def test_max_frame_is_checked_from_the_header_alone():
    decoder = FrameDecoder(expect_masked=False, max_frame=10)
    assert decoder.feed(encode_frame(OP_BINARY, b"x" * 10)) == [("data", b"x" * 10)]
    with pytest.raises(RemoteProtocolError, match="v2sync"):
        decoder.feed(encode_frame(OP_BINARY, b"x" * 11)[:2])


def test_data_in_a_later_feed_after_close():
    decoder = FrameDecoder(expect_masked=False)
    decoder.feed(encode_close(1000))
    with pytest.raises(RemoteProtocolError, match="after a close"):
        decoder.feed(b"\x82")


def test_encoder_refuses_bad_local_input():
    with pytest.raises(LocalProtocolError):
        encode_frame(3, b"")
    with pytest.raises(LocalProtocolError):
        encode_frame(OP_PING, b"x" * 126)
    with pytest.raises(LocalProtocolError):
        encode_frame(OP_BINARY, b"x", b"abc")


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.binary(max_size=64), st.integers(1, 8))
def test_any_bytes_decode_or_raise_protocol_error(expect_masked, wire, step):
    decoder = FrameDecoder(expect_masked, max_frame=16)
    try:
        for pos in range(0, len(wire), step):
            for event in decoder.feed(wire[pos:pos + step]):
                assert event[0] in ("data", "ping", "pong", "close")
    except ProtocolError:
        pass


# -- runs of small server frames (the client's fast path) -------------------------------------

def server_frames(rng: random.Random, count: int) -> bytes:
    """What 4.34's server sends: many small unmasked binary frames (both length classes),
    with now and then a ping, an empty frame or a fragmented message."""
    wire = b""
    for i in range(count):
        kind = rng.random()
        if kind < 0.05:
            wire += encode_frame(OP_PING, bytes([i % 256]))
        elif kind < 0.08:
            wire += encode_frame(OP_BINARY, b"")
        elif kind < 0.12:
            wire += header(OP_BINARY, 3) + b"abc" + header(0x80 | OP_CONT, 2) + b"de"
        else:
            wire += encode_frame(OP_BINARY, rng.randbytes(rng.choice((1, 125, 126, 2048, 4000))))
    return wire


def test_a_run_of_small_frames_whole_split_and_byte_at_a_time_agree():
    rng = random.Random(19)
    wire = server_frames(rng, 300) + encode_close(1000)
    whole = FrameDecoder(expect_masked=False).feed(wire)
    assert len([e for e in whole if e[0] == "data"]) < 30  # runs came out joined
    one_byte = feed_chunks(FrameDecoder(False), wire, iter(lambda: 1, None))
    random_cuts = feed_chunks(FrameDecoder(False), wire, iter(lambda: rng.randint(1, 5000), None))
    assert merged(whole) == merged(one_byte) == merged(random_cuts)
    assert whole[-1] == ("close", 1000, b"")


def test_a_run_stops_at_a_bad_frame_and_the_general_path_refuses_it():
    good = encode_frame(OP_BINARY, b"x" * 10)
    for bad, message in ((header(0x80 | OP_BINARY, 0x81) + KEY + b"x", "bad MASK"),
                         (header(0x80 | 0x40 | OP_BINARY, 0), "RSV1 set"),
                         (encode_frame(OP_BINARY, b"y" * 11), "v2sync"),
                         (header(0x80 | OP_CONT, 1) + b"x", "continuation after FIN")):
        decoder = FrameDecoder(expect_masked=False, max_frame=10)
        with pytest.raises(RemoteProtocolError, match=message):
            decoder.feed(good + good + bad)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 60), st.integers(1, 3000))
def test_server_frames_decode_the_same_under_any_cuts(seed, count, step):
    wire = server_frames(random.Random(seed), count)
    expected = merged(FrameDecoder(False).feed(wire))
    assert merged(feed_chunks(FrameDecoder(False), wire, iter(lambda: step, None))) == expected
