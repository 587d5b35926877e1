"""The dns outbound's codec, socket-free; dnspython (an independent implementation) builds
the queries and reads the answers."""
from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.codec_checks import assert_decodes

from v2sync.common.errors import ConfigError, ProtocolError, RemoteProtocolError
from v2sync.common.net import Address, Network
from v2sync.proxy.dns import encoding as enc
from v2sync.proxy.dns.config import DnsOutboundConfig


def query(name: str, rdtype: str) -> dns.message.QueryMessage:
    return dns.message.make_query(name, rdtype)


@pytest.mark.parametrize("rdtype, qtype", [("A", 1), ("AAAA", 28)])
def test_ip_queries_are_recognised(rdtype: str, qtype: int) -> None:
    q = query("www.example.com", rdtype)
    assert enc.parse_ip_query(q.to_wire()) == enc.IPQuery(q.id, qtype, "www.example.com")


@pytest.mark.parametrize("rdtype", ["TXT", "MX", "PTR", "HTTPS", "ANY"])
def test_other_queries_are_passed_on(rdtype: str) -> None:
    assert enc.parse_ip_query(query("example.com", rdtype).to_wire()) is None


@pytest.mark.parametrize("data", [b"", b"\x00" * 11, b"\x12\x34" + b"\x00" * 10, b"\xff" * 40])
def test_unparsable_or_questionless_messages_are_not_ip_queries(data: bytes) -> None:
    assert enc.parse_ip_query(data) is None


def test_answer_reads_back_in_dnspython() -> None:
    q = query("hijacked.test", "A")
    ip_query = enc.parse_ip_query(q.to_wire())
    wire = enc.encode_ip_answer(ip_query, [Address.parse("10.7.7.7"), Address.parse("::1"),
                                           Address.parse("10.7.7.8")])
    answer = dns.message.from_wire(wire)
    assert answer.id == q.id and answer.rcode() == dns.rcode.NOERROR
    assert answer.flags & dns.flags.QR and answer.flags & dns.flags.AA
    assert answer.flags & dns.flags.RD and answer.flags & dns.flags.RA
    (rrset,) = answer.answer
    assert rrset.ttl == enc.ANSWER_TTL and rrset.rdtype == dns.rdatatype.A
    assert sorted(r.address for r in rrset) == ["10.7.7.7", "10.7.7.8"]  # no AAAA in an A answer
    assert q.is_response(answer)


def test_rcode_answer_has_no_records() -> None:
    q = query("missing.test", "AAAA")
    answer = dns.message.from_wire(
        enc.encode_ip_answer(enc.parse_ip_query(q.to_wire()), [], dns.rcode.NXDOMAIN))
    assert answer.rcode() == dns.rcode.NXDOMAIN and not answer.answer


def test_tcp_framing_whole_bytewise_and_with_trailer() -> None:
    message = query("example.com", "TXT").to_wire()
    assert_decodes(enc.parse_tcp_message, enc.frame_tcp_message(message), message, b"\x00\x05ab")


def test_tcp_message_over_2_kib_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        enc.parse_tcp_message(b"\x08\x01")
    assert enc.parse_tcp_message(b"\x08\x00") is None  # exactly 2048: wait for it


@given(st.binary(max_size=64))
def test_anything_parses_needs_more_or_raises(data: bytes) -> None:
    try:
        enc.parse_tcp_message(data)
    except ProtocolError:
        pass
    enc.parse_ip_query(data)  # never raises: unparsable is "not an IP query"


def test_settings() -> None:
    assert DnsOutboundConfig.from_json({}) == DnsOutboundConfig()
    settings = DnsOutboundConfig.from_json({"network": "TCP", "address": "1.1.1.1", "port": 53})
    assert settings == DnsOutboundConfig(Network.TCP, Address.parse("1.1.1.1"), 53)
    with pytest.raises(ConfigError) as info:
        DnsOutboundConfig.from_json({"network": "quic"}, "outbounds[0].settings")
    assert info.value.path == "outbounds[0].settings.network"
