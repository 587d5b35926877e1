"""DNS message codec: hand-assembled vectors (RFC 1035 §4, RFC 7871), compression, garbage,
and Hypothesis properties. No sockets."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, strategies as st

from v2sync.app.dns import wire
from v2sync.common.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from v2sync.common.net import Address

TRAILER = b"\x00TRAILING"

# id 0x1234, flags RD, one question, no records; "example.com" A IN.
QUERY_EXAMPLE_A = (bytes.fromhex("1234 0100 0001 0000 0000 0000")
                   + b"\x07example\x03com\x00" + bytes.fromhex("0001 0001"))
# The same query for 1.2.3.4 as v2ray sends it: arcount 1, an OPT record (root name, type 41,
# class = UDP size 1350, TTL 0) holding option 8 (client subnet): family 1, /24, scope 0, and
# only the prefix's 3 octets.
QUERY_EXAMPLE_A_ECS = (bytes.fromhex("1234 0100 0001 0000 0000 0001")
                       + b"\x07example\x03com\x00" + bytes.fromhex("0001 0001")
                       + bytes.fromhex("00 0029 0546 00000000 000b")
                       + bytes.fromhex("0008 0007 0001 18 00 010203"))


def compressed_response() -> bytes:
    """www.example.com -> CNAME cdn.example.com -> A + AAAA, every name compressed."""
    header = bytes.fromhex("beef 8180 0001 0003 0000 0000")
    question = b"\x03www\x07example\x03com\x00" + bytes.fromhex("0001 0001")  # offsets 12..32
    cname = (bytes.fromhex("c00c 0005 0001 0000012c 0006")  # www.example.com, TTL 300
             + b"\x03cdn\xc0\x10")  # "cdn" + pointer to "example.com" at 16; rdata at 45
    a = bytes.fromhex("c02d 0001 0001 0000003c 0004 5db8d822")  # cdn.example.com, TTL 60
    aaaa = (bytes.fromhex("c02d 001c 0001 0000001e 0010")  # TTL 30
            + ipaddress.ip_address("2606:2800:220:1:248:1893:25c8:1946").packed)
    return header + question + cname + a + aaaa


COMPRESSED_EXPECTED = wire.Message(
    id=0xBEEF, flags=0x8180,
    questions=(wire.Question("www.example.com", wire.TYPE_A),),
    answers=(
        wire.Record("www.example.com", wire.TYPE_CNAME, 300, "cdn.example.com"),
        wire.Record("cdn.example.com", wire.TYPE_A, 60, Address.parse("93.184.216.34")),
        wire.Record("cdn.example.com", wire.TYPE_AAAA, 30,
                    Address.parse("2606:2800:220:1:248:1893:25c8:1946")),
    ))


def assert_decodes(wire_bytes: bytes, expected: wire.Message) -> None:
    """Whole, one byte at a time (None until the last byte) and with trailing bytes."""
    assert wire.parse_message(wire_bytes) == (expected, len(wire_bytes))
    for cut in range(len(wire_bytes)):
        assert wire.parse_message(wire_bytes[:cut]) is None, cut
    message, consumed = wire.parse_message(wire_bytes + TRAILER)
    assert message == expected
    assert (wire_bytes + TRAILER)[consumed:] == TRAILER


def test_encode_query_matches_rfc1035_layout() -> None:
    assert wire.encode_query(0x1234, "example.com", wire.TYPE_A) == QUERY_EXAMPLE_A
    assert wire.encode_query(0x1234, "example.com.", wire.TYPE_A) == QUERY_EXAMPLE_A


def test_encode_query_with_ipv4_client_subnet() -> None:
    query = wire.encode_query(0x1234, "example.com", wire.TYPE_A, Address.parse("1.2.3.4"))
    assert query == QUERY_EXAMPLE_A_ECS
    message, _ = wire.parse_message(query)
    assert message.client_subnet() == (wire.ECS_FAMILY_IPV4, 24, b"\x01\x02\x03")


def test_client_subnet_ipv6_is_cut_to_96_bits() -> None:
    query = wire.encode_query(7, "a.test", wire.TYPE_AAAA,
                              Address.parse("2001:db8:1:2:3:4:5:6"))
    message, _ = wire.parse_message(query)
    family, prefix, address = message.client_subnet()
    assert (family, prefix) == (wire.ECS_FAMILY_IPV6, 96)
    assert address == ipaddress.ip_address("2001:db8:1:2:3:4::").packed[:12]
    assert message.additionals[0].rclass == wire.EDNS_UDP_PAYLOAD


def test_query_decodes_whole_bytewise_and_with_trailer() -> None:
    expected = wire.Message(0x1234, wire.FLAG_RD, (wire.Question("example.com", wire.TYPE_A),))
    assert_decodes(QUERY_EXAMPLE_A, expected)
    assert not expected.is_response


def test_compressed_response_decodes_whole_bytewise_and_with_trailer() -> None:
    assert_decodes(compressed_response(), COMPRESSED_EXPECTED)


def test_response_accessors() -> None:
    message, _ = wire.parse_message(compressed_response())
    assert message.is_response and not message.is_truncated
    assert message.rcode == wire.RCODE_NOERROR
    assert [str(a) for a in message.addresses()] == [
        "93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    assert message.client_subnet() is None


def test_rcode_and_names() -> None:
    message = wire.Message(1, wire.FLAG_QR | wire.RCODE_NXDOMAIN)
    assert message.rcode == wire.RCODE_NXDOMAIN
    assert wire.rcode_name(message.rcode) == "NXDOMAIN"
    assert wire.rcode_name(11) == "RCODE11"


def test_unknown_record_type_keeps_raw_rdata() -> None:
    txt = wire.Record("t.test", 16, 5, b"\x05hello")
    message = wire.Message(2, wire.FLAG_QR, answers=(txt,))
    assert_decodes(wire.encode_message(message), message)


def _replace(buf: bytes, offset: int, new: bytes) -> bytes:
    return buf[:offset] + new + buf[offset + len(new):]


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: _replace(b, 33, b"\xc0\x21"), "forward pointer (to itself)"),
    (lambda b: _replace(b, 33, b"\xc0\x30"), "pointer past the name"),
    (lambda b: _replace(b, 12, b"\x43"), "label type 01 (extended label)"),
    (lambda b: _replace(b, 12, b"\x83"), "label type 10"),
    (lambda b: _replace(b, 43, b"\x00\x07"), "CNAME rdlength with stray bytes"),
    (lambda b: _replace(b, 43, b"\x00\x03"), "CNAME rdlength cutting its name"),
    (lambda b: _replace(b, 61, b"\x00\x03"), "A record of 3 bytes"),
])
def test_garbage_is_remote_protocol_error(mutate, reason) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.parse_message(mutate(compressed_response()))


def test_pointer_to_an_earlier_root_label_is_legal_but_not_to_itself() -> None:
    header = bytes.fromhex("0001 0000 0002 0000 0000 0000")
    first = b"\x01a\x00" + b"\x00\x01\x00\x01"  # "a" at 12; its root label sits at 14
    second = b"\xc0\x0e" + b"\x00\x01\x00\x01"  # a pointer to that root label
    message, _ = wire.parse_message(header + first + second)
    assert [q.name for q in message.questions] == ["a", ""]
    self_loop = bytes.fromhex("0001 0000 0001 0000 0000 0000") + b"\xc0\x0c\x00\x01\x00\x01"
    with pytest.raises(RemoteProtocolError):
        wire.parse_message(self_loop)


def test_name_longer_than_255_octets_is_refused() -> None:
    name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 octets
    message = bytes.fromhex("0001 0000 0001 0000 0000 0000") + name + b"\x00\x01\x00\x01"
    with pytest.raises(RemoteProtocolError):
        wire.parse_message(message)


def test_oversized_incomplete_message_is_garbage_not_need_more() -> None:
    header = bytes.fromhex("0001 8000 ffff 0000 0000 0000")
    questions = (b"\x00\x00\x01\x00\x01") * (wire.MAX_MESSAGE_LENGTH // 5)
    with pytest.raises(RemoteProtocolError):
        wire.parse_message(header + questions)


@pytest.mark.parametrize("name", ["a..b", "a" * 64 + ".com", ".".join(["abcdefgh"] * 30),
                                  "bücher.example"])
def test_encode_name_refuses_invalid_names(name: str) -> None:
    with pytest.raises(LocalProtocolError):
        wire.encode_query(1, name, wire.TYPE_A)


def test_encode_refuses_mismatched_record_values() -> None:
    with pytest.raises(LocalProtocolError):
        wire.encode_message(wire.Message(1, 0, answers=(
            wire.Record("a", wire.TYPE_A, 1, Address.parse("::1")),)))
    with pytest.raises(LocalProtocolError):
        wire.client_subnet_record(Address.parse("example.com"))


# ---------------------------------------------------------------- properties

_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_names = st.lists(_label, min_size=0, max_size=8).map(".".join)
_ipv4 = st.ip_addresses(v=4).map(lambda ip: Address.parse(str(ip)))
_ipv6 = st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None).map(
    lambda ip: Address.parse(str(ip)))
_ttl = st.integers(0, 2**32 - 1)
_records = st.one_of(
    st.builds(wire.Record, _names, st.just(wire.TYPE_A), _ttl, _ipv4),
    st.builds(wire.Record, _names, st.just(wire.TYPE_AAAA), _ttl, _ipv6),
    st.builds(wire.Record, _names, st.just(wire.TYPE_CNAME), _ttl, _names),
    st.builds(wire.Record, _names, st.just(16), _ttl, st.binary(max_size=40)),
)
_sections = st.lists(_records, max_size=4).map(tuple)
_messages = st.builds(
    wire.Message, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
    st.lists(st.builds(wire.Question, _names, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
             max_size=3).map(tuple),
    _sections, _sections, _sections)


@given(_messages)
def test_encode_then_parse_round_trips(message: wire.Message) -> None:
    encoded = wire.encode_message(message)
    assert wire.parse_message(encoded) == (message, len(encoded))


def _assert_contract(data: bytes) -> None:
    """Parses (one message, consumed within the buffer), needs more, or raises ProtocolError."""
    try:
        result = wire.parse_message(data)
    except ProtocolError:
        return
    if result is not None:
        message, consumed = result
        assert isinstance(message, wire.Message)
        assert wire.HEADER_LENGTH <= consumed <= len(data)
        assert wire.parse_message(data[:consumed]) == (message, consumed)


@given(st.binary(max_size=600))
def test_any_bytes_parse_need_more_or_protocol_error(data: bytes) -> None:
    _assert_contract(data)


@given(st.binary(min_size=12, max_size=300))
def test_any_body_after_small_counts(data: bytes) -> None:
    # Small section counts so random bodies reach the name and record parsers.
    _assert_contract(data[:4] + struct.pack("!HHHH", 1, 2, 1, 1) + data[12:])


def test_the_first_question_whole_byte_by_byte_and_with_trailing_bytes() -> None:
    query = wire.encode_query(0x1234, "example.com", wire.TYPE_AAAA)
    expected = (0x1234, wire.Question("example.com", wire.TYPE_AAAA))
    assert wire.parse_first_question(query) == expected
    for cut in range(len(query)):  # a prefix never yields a question it does not hold
        assert wire.parse_first_question(query[:cut]) is None
    # what follows the question is not read: a promised record that is missing or garbage
    broken = query[:10] + b"\x00\x05" + query[12:] + b"\xff\xff garbage"
    assert wire.parse_first_question(broken) == expected
    no_question = b"\x00\x01\x01\x00" + b"\x00" * 8
    assert wire.parse_first_question(no_question) is None
