"""v2sync's DNS client against a real resolver: Debian's dnsmasq on loopback (issue 21, part 4).

dnsmasq (tests/support/dnsmasq.py) serves a few host records, a CNAME, and NXDOMAIN for
everything else; dnspython, a client v2sync did not write, asks the same server the same
question, and v2sync's ``UdpNameServer`` / ``DnsResolver`` must read the same answer from it.
"""
from __future__ import annotations

import time
from typing import Iterator, List

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from support.dnsmasq import Dnsmasq, require_dnsmasq

from v2sync.app.dns import wire
from v2sync.app.dns.client import UdpNameServer
from v2sync.app.dns.config import DnsConfig
from v2sync.app.dns.server import DnsAnswerError, DnsResolver, NeedsNetwork

TTL = 77
TIMEOUT = 2.0
RECORDS = {
    "both.test": ["192.0.2.10", "192.0.2.11", "2001:db8::10"],
    "v4.test": ["192.0.2.20"],
    "v6.test": ["2001:db8::20"],
    "target.test": ["198.51.100.30"],
}
CNAMES = {"alias.test": "target.test"}
NAMES = ["both.test", "v4.test", "v6.test", "alias.test", "nx.test", "BOTH.test"]
QTYPES = [wire.TYPE_A, wire.TYPE_AAAA]


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[Dnsmasq]:
    with Dnsmasq(require_dnsmasq(), RECORDS, cnames=CNAMES, ttl=TTL) as server:
        yield server


def dnspython_answer(server: Dnsmasq, name: str, qtype: int) -> tuple:
    """(rcode, sorted addresses) as dnspython reads dnsmasq's reply."""
    reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.RdataType(qtype)),
                          server.host, port=server.port, timeout=TIMEOUT)
    found = sorted(rr.to_text() for rrset in reply.answer if rrset.rdtype == qtype for rr in rrset)
    return reply.rcode(), found


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("qtype", QTYPES, ids=["A", "AAAA"])
def test_exchange_reads_what_dnspython_reads(dnsmasq: Dnsmasq, name: str, qtype: int) -> None:
    client = UdpNameServer(dnsmasq.host, dnsmasq.port, timeout=TIMEOUT)
    answer = client.exchange(name, [qtype])[qtype]
    rcode, expected = dnspython_answer(dnsmasq, name, qtype)
    assert (answer.rcode, sorted(a.value for a in answer.addresses)) == (rcode, expected)


def test_both_families_in_one_exchange(dnsmasq: Dnsmasq) -> None:
    client = UdpNameServer(dnsmasq.host, dnsmasq.port, timeout=TIMEOUT)
    answers = client.exchange("both.test", QTYPES)
    assert sorted(answers) == sorted(QTYPES)
    assert [a.value for a in answers[wire.TYPE_A].addresses] == ["192.0.2.10", "192.0.2.11"]
    assert [a.value for a in answers[wire.TYPE_AAAA].addresses] == ["2001:db8::10"]


def test_ttl_is_the_servers(dnsmasq: Dnsmasq) -> None:
    answer = UdpNameServer(dnsmasq.host, dnsmasq.port, timeout=TIMEOUT).exchange("v4.test", [wire.TYPE_A])
    assert 0 < answer[wire.TYPE_A].ttl <= TTL


def test_nxdomain_is_read_as_such(dnsmasq: Dnsmasq) -> None:
    answer = UdpNameServer(dnsmasq.host, dnsmasq.port, timeout=TIMEOUT).exchange("nx.test", [wire.TYPE_A])
    assert answer[wire.TYPE_A].rcode == dns.rcode.NXDOMAIN and not answer[wire.TYPE_A].addresses


def resolver(server: Dnsmasq) -> DnsResolver:
    section = {"servers": [{"address": server.host, "port": server.port}]}
    return DnsResolver(DnsConfig.from_json(section), clock=time.monotonic, query_timeout=TIMEOUT)


@pytest.mark.parametrize("strategy, expected", [
    ("UseIPv4", ["192.0.2.10", "192.0.2.11"]), ("UseIPv6", ["2001:db8::10"]),
    ("UseIP", ["192.0.2.10", "192.0.2.11", "2001:db8::10"]),
])
def test_resolver_strategies(dnsmasq: Dnsmasq, strategy: str, expected: List[str]) -> None:
    assert sorted(a.value for a in resolver(dnsmasq).lookup("both.test", strategy)) == expected


def test_resolver_follows_the_cname(dnsmasq: Dnsmasq) -> None:
    assert [a.value for a in resolver(dnsmasq).lookup("alias.test", "UseIPv4")] == ["198.51.100.30"]
    assert "query[A] alias.test" in dnsmasq.query_log()  # it did ask dnsmasq, not a cache elsewhere


def test_an_answer_at_hand_is_the_lookups_own(dnsmasq: Dnsmasq) -> None:
    """``cached_only``: before any lookup the answer needs the server; after one, the
    cached answer is the one ``lookup`` gives, the server not asked again."""
    dns_ = resolver(dnsmasq)
    with pytest.raises(NeedsNetwork):
        dns_.lookup("v4.test", "UseIPv4", cached_only=True)
    asked = dnsmasq.query_log().count("query[A] v4.test")
    looked_up = dns_.lookup("v4.test", "UseIPv4")
    assert dns_.lookup("v4.test", "UseIPv4", cached_only=True) == looked_up
    assert dnsmasq.query_log().count("query[A] v4.test") == asked + 1
    with pytest.raises(DnsAnswerError):  # NXDOMAIN, cached as such
        dns_.lookup("nx.test", "UseIPv4")
    with pytest.raises(DnsAnswerError):
        dns_.lookup("nx.test", "UseIPv4", cached_only=True)


def test_hosts_and_literals_are_at_hand_the_system_resolver_is_not() -> None:
    section = {"hosts": {"h.test": "192.0.2.5"}}  # no servers: the system resolver's
    dns_ = DnsResolver(DnsConfig.from_json(section), clock=time.monotonic)
    assert [a.value for a in dns_.lookup("h.test", "UseIP", cached_only=True)] == ["192.0.2.5"]
    assert [a.value for a in dns_.lookup("192.0.2.6", "UseIP", cached_only=True)] == \
        ["192.0.2.6"]
    with pytest.raises(NeedsNetwork):
        dns_.lookup("elsewhere.test", "UseIP", cached_only=True)
