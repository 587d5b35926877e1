"""The Trojan header codec (protocol.go). Socket-free; interop with 4.34 is in
tests/scenarios/test_keyed_interop.py."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, strategies as st
from support.codec_checks import assert_decodes

from v2sync.common.errors import ProtocolError, RemoteProtocolError
from v2sync.common.net import Address, Network
from v2sync.proxy.trojan.encoding import (Command, RequestHeader, encode_request_header,
                                          parse_request_header, password_key, peek_key)

# FIPS 180-2 appendix: SHA-224("abc").
ABC_SHA224 = b"23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"


def test_password_key_is_hex_sha224() -> None:
    assert password_key("abc") == ABC_SHA224
    assert password_key("pässword") == hashlib.sha224("pässword".encode()).hexdigest().encode()


def test_request_layout() -> None:
    header = RequestHeader(ABC_SHA224, Command.TCP, Address.parse("example.com"), 443)
    wire = encode_request_header(header)
    assert wire == ABC_SHA224 + b"\r\n\x01\x03\x0bexample.com\x01\xbb\r\n"
    assert_decodes(parse_request_header, wire, header, b"\x16\x03\x01")


def test_udp_and_other_commands() -> None:
    udp = RequestHeader(ABC_SHA224, Command.UDP, Address.parse("10.0.0.1"), 53)
    wire = encode_request_header(udp)
    assert_decodes(parse_request_header, wire, udp, b"\x01")
    assert udp.destination().network is Network.UDP
    odd = bytearray(wire)
    odd[58] = 7  # 4.34: anything but 3 is TCP
    assert parse_request_header(bytes(odd))[0].command == Command.TCP


def test_peek_key_and_the_not_trojan_rule() -> None:
    assert peek_key(ABC_SHA224 + b"\r") is None  # 57 bytes: not yet
    assert peek_key(ABC_SHA224 + b"\r\n") == ABC_SHA224
    with pytest.raises(RemoteProtocolError):
        peek_key(b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88.1\r\n")


@given(data=st.binary(max_size=120))
def test_any_bytes_parse_need_more_or_raise(data: bytes) -> None:
    for blob in (data, ABC_SHA224 + b"\r\n" + data):
        try:
            result = parse_request_header(blob)
        except ProtocolError:
            continue
        if result is not None:
            assert 0 < result[1] <= len(blob)
