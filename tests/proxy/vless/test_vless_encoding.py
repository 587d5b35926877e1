"""The VLESS header codec (encoding.go, addons.go). Socket-free; interop with 4.34 is in
tests/scenarios/test_keyed_interop.py."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from support.codec_checks import assert_decodes

from v2sync.common.errors import ProtocolError, RemoteProtocolError
from v2sync.common.net import Address, Destination, Network
from v2sync.proxy.vless.encoding import (MUX_DESTINATION, Command, RequestHeader,
                                         encode_request_header, encode_response_header,
                                         parse_request_header, parse_response_header,
                                         peek_user)
from v2sync.proxy.vmess.ids import parse_uuid

UUID = parse_uuid("b831381d-6324-4d53-ad4f-8cda48b30811")


def test_request_layout() -> None:
    header = RequestHeader(UUID, Command.TCP, Address.parse("example.com"), 443)
    wire = encode_request_header(header)
    assert wire == b"\x00" + UUID + b"\x00\x01\x01\xbb\x02\x0bexample.com"
    assert_decodes(parse_request_header, wire, header, b"GET / HTTP/1.1\r\n")
    assert header.destination() == Destination(Address.parse("example.com"), 443)


def test_udp_ipv6_and_mux() -> None:
    udp = RequestHeader(UUID, Command.UDP, Address.parse("2001:db8::1"), 53)
    assert_decodes(parse_request_header, encode_request_header(udp), udp, b"\x00\x05")
    assert udp.destination().network is Network.UDP
    mux = RequestHeader(UUID, Command.MUX, MUX_DESTINATION.address, 0)
    wire = encode_request_header(mux)
    assert wire == b"\x00" + UUID + b"\x00\x03"  # no port or address for Mux
    assert_decodes(parse_request_header, wire, mux, b"\x00\x0c")
    assert mux.destination() == MUX_DESTINATION


def test_addons_are_skipped() -> None:
    addons = b"\x0a\x10xtls-rprx-direct"  # protobuf Addons{Flow}
    wire = b"\x00" + UUID + bytes([len(addons)]) + addons + b"\x01\x00\x50\x01\x7f\x00\x00\x01"
    parsed, used = parse_request_header(wire)
    assert used == len(wire) and parsed.port == 80 and parsed.address == Address.parse("127.0.0.1")


@pytest.mark.parametrize("wire, message", [
    (b"\x01" + UUID + b"\x00\x01", "invalid request version 1"),
    (b"\x00" + UUID + b"\x00\x04\x00\x50\x01\x7f\x00\x00\x01", "invalid request command 4"),
    (b"\x00" + UUID + b"\x00\x01\x00\x50\x09", "unknown address type 9"),
])
def test_garbage(wire: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        parse_request_header(wire)


def test_peek_user() -> None:
    assert peek_user(b"\x00" + UUID[:5]) is None
    assert peek_user(b"\x00" + UUID) == UUID
    with pytest.raises(RemoteProtocolError):
        peek_user(b"G")  # the first byte already says "not VLESS"


def test_response_header() -> None:
    assert encode_response_header() == b"\x00\x00"
    assert_decodes(parse_response_header, b"\x00\x00", b"", b"data")
    assert parse_response_header(b"\x00\x02ab") == (b"ab", 4)
    with pytest.raises(RemoteProtocolError):
        parse_response_header(b"\x01\x00")


@given(data=st.binary(max_size=80))
def test_any_bytes_parse_need_more_or_raise(data: bytes) -> None:
    for blob in (data, b"\x00" + UUID + data):
        for parse in (parse_request_header, parse_response_header):
            try:
                result = parse(blob)
            except ProtocolError:
                continue
            if result is not None:
                assert 0 < result[1] <= len(blob)
