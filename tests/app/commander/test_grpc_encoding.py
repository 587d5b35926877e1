"""gRPC's length-prefixed message codec: socket-free, the house contract (whole, byte by
byte, trailing bytes kept) and a Hypothesis property."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from support.codec_checks import assert_decodes
from v2sync.app.commander.encoding import (CUT_MARK, MAX_MESSAGE, MAX_STATUS_MESSAGE,
                                           MessageTooLarge, decode_message,
                                           decode_status_message, encode_message,
                                           encode_status_message)
from v2sync.common.errors import ProtocolError, RemoteProtocolError


def test_round_trip_whole_bytewise_and_with_trailer() -> None:
    payload = b"\x0a\x03abc\x10\x01"
    assert_decodes(decode_message, encode_message(payload), payload, b"\x00\x00\x00")


def test_empty_message() -> None:
    assert decode_message(encode_message(b"")) == (b"", 5)


def test_compressed_flag_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="compressed"):
        decode_message(b"\x01\x00\x00\x00\x01x")


def test_length_over_the_limit_is_refused_before_the_body_arrives() -> None:
    with pytest.raises(MessageTooLarge, match="larger than max"):
        decode_message(struct.pack(">BI", 0, MAX_MESSAGE + 1))


def test_status_message_is_percent_encoded() -> None:
    text = "100% naïve\nline"
    encoded = encode_status_message(text)
    assert encoded.isascii() and "\n" not in encoded and "%25" in encoded
    assert decode_status_message(encoded) == text


@pytest.mark.parametrize("text, encoded", [
    ("handler not found: ", "handler not found:%20"), (" a b ", "%20a b%20"), ("  ", "%20%20"),
])
def test_a_status_message_keeps_the_spaces_at_its_ends(text: str, encoded: str) -> None:
    # h2 strips a header value's surrounding spaces; 4.34's texts can end in one.
    assert encode_status_message(text) == encoded
    assert decode_status_message(encoded) == text


@given(st.binary(max_size=64))
def test_anything_parses_needs_more_or_is_refused(data: bytes) -> None:
    try:
        result = decode_message(data)
    except ProtocolError:
        return
    if result is not None:
        payload, used = result
        assert used == 5 + len(payload) <= len(data)


def test_a_long_status_message_is_cut() -> None:
    """A request's own text can be megabytes; the header's hpack coding is pure Python."""
    text = "x" * (MAX_STATUS_MESSAGE * 3)
    assert decode_status_message(encode_status_message(text)) == (
        "x" * (MAX_STATUS_MESSAGE - len(CUT_MARK)) + CUT_MARK)
    short = "y" * MAX_STATUS_MESSAGE
    assert decode_status_message(encode_status_message(short)) == short
