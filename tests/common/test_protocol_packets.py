"""Datagrams framed in a stream (VLESS ``len | packet``, Trojan ``addr | len | CRLF |
payload``) and the shared ``PacketStream`` reader. Socket-free."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from support.codec_checks import assert_decodes

from v2sync.common.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from v2sync.common.net import Address, Destination, Network
from v2sync.common.protocol.packets import (TROJAN_MAX_PAYLOAD, AddressedPacket, PacketStream,
                                            encode_length_packet, encode_trojan_packets,
                                            parse_length_packet, parse_trojan_packet)

DNS = Destination(Address.parse("1.1.1.1"), 53, Network.UDP)
NAMED = Destination(Address.parse("example.com"), 443, Network.UDP)


def test_length_packet_whole_bytewise_and_with_trailer() -> None:
    wire = encode_length_packet(b"hello")
    assert wire == b"\x00\x05hello"
    assert_decodes(parse_length_packet, wire, b"hello", b"\x00\x01X")


def test_empty_length_packet_and_the_u16_limit() -> None:
    assert parse_length_packet(b"\x00\x00rest") == (b"", 2)
    assert len(encode_length_packet(b"x" * 0xFFFF)) == 0xFFFF + 2
    with pytest.raises(LocalProtocolError):
        encode_length_packet(b"x" * 0x10000)


def test_trojan_packet_layout() -> None:
    wire = encode_trojan_packets(DNS, b"q")
    assert wire == b"\x01\x01\x01\x01\x01\x00\x35\x00\x01\r\nq"
    assert_decodes(parse_trojan_packet, wire, AddressedPacket(DNS, b"q"), b"\x03")
    named = encode_trojan_packets(NAMED, b"abc")
    assert named.startswith(b"\x03\x0bexample.com\x01\xbb\x00\x03\r\n")
    assert parse_trojan_packet(named) == (AddressedPacket(NAMED, b"abc"), len(named))


def test_trojan_writer_splits_and_reader_refuses_oversize() -> None:
    payload = bytes(range(256)) * 40  # 10240 bytes: two frames, as 4.34's PacketWriter
    stream: PacketStream = PacketStream(parse_trojan_packet)
    packets = stream.feed(encode_trojan_packets(DNS, payload))
    assert [len(p.payload) for p in packets] == [TROJAN_MAX_PAYLOAD, 10240 - TROJAN_MAX_PAYLOAD]
    assert b"".join(p.payload for p in packets) == payload
    oversize = b"\x01\x01\x01\x01\x01\x00\x35" + (TROJAN_MAX_PAYLOAD + 1).to_bytes(2, "big")
    with pytest.raises(RemoteProtocolError):
        parse_trojan_packet(oversize + b"\r\n")


@pytest.mark.parametrize("cut", range(0, 24))
def test_packet_stream_survives_any_split(cut: int) -> None:
    wire = b"".join(encode_length_packet(p) for p in (b"one", b"", b"three", b"four!"))
    stream: PacketStream = PacketStream(parse_length_packet)
    got = stream.feed(wire[:cut]) + stream.feed(wire[cut:])
    assert got == [b"one", b"", b"three", b"four!"]
    assert not stream.partial


def test_packet_stream_reports_a_truncated_frame() -> None:
    stream: PacketStream = PacketStream(parse_length_packet)
    assert stream.feed(b"\x00\x05abc") == []
    assert stream.partial
    assert stream.feed(b"de") == [b"abcde"]


@given(data=st.binary(max_size=200))
def test_any_bytes_parse_need_more_or_raise(data: bytes) -> None:
    for parse in (parse_length_packet, parse_trojan_packet):
        try:
            result = parse(data)
        except ProtocolError:
            continue
        if result is not None:
            assert 0 < result[1] <= len(data)


@given(packets=st.lists(st.binary(max_size=300), max_size=8), cut=st.integers(0, 3000))
def test_stream_round_trip(packets, cut: int) -> None:
    wire = b"".join(encode_trojan_packets(NAMED, p) for p in packets if p)
    stream: PacketStream = PacketStream(parse_trojan_packet)
    got = stream.feed(wire[:cut]) + stream.feed(wire[cut:])
    assert [p.payload for p in got] == [p for p in packets if p]
