"""The PROXY protocol v1/v2 codec (haproxy ``proxy-protocol.txt``). Socket-free; what
v2ray 4.34 sends is compared with these encoders in tests/scenarios/test_keyed_bad_input.py."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from support.codec_checks import assert_decodes

from v2sync.common.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from v2sync.common.net import Address, Destination
from v2sync.common.protocol.proxy_protocol import (ProxyHeader, encode, encode_v1, encode_v2,
                                                   parse_header)


def _d(host: str, port: int) -> Destination:
    return Destination(Address.parse(host), port)


SRC4, DST4 = _d("192.0.2.1", 56324), _d("198.51.100.2", 443)
SRC6, DST6 = _d("2001:db8::1", 1000), _d("2001:db8::2", 443)


def test_v1_is_the_spec_example_line() -> None:
    assert encode_v1(SRC4, DST4) == b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
    assert encode_v1(SRC6, DST6) == b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 443\r\n"


def test_v2_layout() -> None:
    wire = encode_v2(SRC4, DST4)
    assert wire[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    assert wire[12:16] == b"\x21\x11\x00\x0c"  # v2 PROXY, TCP over IPv4, 12 bytes
    assert wire[16:] == bytes([192, 0, 2, 1, 198, 51, 100, 2]) + (56324).to_bytes(2, "big") + \
        (443).to_bytes(2, "big")
    assert encode_v2(SRC6, DST6)[12:16] == b"\x21\x21\x00\x24"


def test_a_dual_stack_view_of_ipv4_is_sent_as_ipv4() -> None:
    mapped = _d("::ffff:127.0.0.1", 5000)
    assert encode_v1(mapped, _d("127.0.0.1", 80)).startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1")
    assert encode_v1(mapped, _d("::1", 80)).startswith(b"PROXY TCP6 ::ffff:127.0.0.1 ::1")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("ends", [(SRC4, DST4), (SRC6, DST6)])
def test_round_trip_whole_bytewise_and_with_trailer(version: int, ends) -> None:
    wire = encode(version, *ends)
    assert_decodes(parse_header, wire, ProxyHeader(*ends), b"\x16\x03\x01GET /")


def test_unknown_local_and_tlvs() -> None:
    assert parse_header(b"PROXY UNKNOWN\r\nrest") == (ProxyHeader(None, None), 15)
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    assert parse_header(local) == (ProxyHeader(None, None), 16)
    tlv = encode_v2(SRC4, DST4)
    with_tlv = tlv[:14] + (12 + 4).to_bytes(2, "big") + tlv[16:] + b"\x01\x00\x01h"
    assert parse_header(with_tlv) == (ProxyHeader(SRC4, DST4), len(with_tlv))


@pytest.mark.parametrize("wire", [
    b"GET / HTTP/1.1\r\n", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    b"PROXY TCP4 " + b"1" * 120, b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c" + bytes(12),
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + bytes(4), b"\r\n\r\nX",
])
def test_garbage_is_refused(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_header(wire)


def test_bad_versions_and_names_are_our_errors() -> None:
    with pytest.raises(LocalProtocolError):
        encode(3, SRC4, DST4)
    with pytest.raises(LocalProtocolError):
        encode_v1(_d("example.com", 1), DST4)


@given(data=st.binary(max_size=120))
def test_any_bytes_parse_need_more_or_raise(data: bytes) -> None:
    for blob in (data, b"PROXY " + data, b"\r\n\r\n\x00\r\nQUIT\n" + data):
        try:
            result = parse_header(blob)
        except ProtocolError:
            continue
        if result is not None:
            assert 0 < result[1] <= len(blob)
