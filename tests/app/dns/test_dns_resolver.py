"""DnsResolver and the name servers against real UDP DNS servers started on 127.0.0.1:
hosts, the TTL cache (injected clock), ``domains`` priority, ``expectIps``, ``clientIp`` on
the wire, bounded timeouts, and the system resolver."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any, Iterator, List, Mapping

import dns.message
import dns.rrset
import pytest
from dns_test_server import DnsTestServer

from v2sync.app.dns import wire
from v2sync.app.dns.client import Answer, LocalNameServer, UdpNameServer
from v2sync.app.dns.config import DnsConfig
from v2sync.app.dns.server import DnsCache, DnsResolver
from v2sync.common.errors import TransportError
from v2sync.common.net import Address

SHORT_TIMEOUT = 0.4  # per server in these tests (4 s in production)
RECORDS = {"a.test": ["10.0.0.1", "10.0.0.2", "2001:db8::1"], "v4only.test": ["10.0.0.9"],
           "corp.test": ["10.1.1.1"], "x.corp.test": ["10.1.1.2"], "public.test": ["1.1.1.1"]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer(RECORDS, ttl=60) as server:
        yield server


def server_entry(server: DnsTestServer, **extra: Any) -> Mapping[str, Any]:
    return {"address": server.host, "port": server.port, **extra}


def resolver(section: Mapping[str, Any], clock: Any = time.monotonic,
             timeout: float = SHORT_TIMEOUT) -> DnsResolver:
    return DnsResolver(DnsConfig.from_json(section), clock=clock, query_timeout=timeout)


def texts(addresses: List[Address]) -> List[str]:
    return [a.value for a in addresses]


# ---------------------------------------------------------------- UDP servers


def test_use_ip_returns_ipv4_then_ipv6(dns_server: DnsTestServer) -> None:
    dns = resolver({"servers": [server_entry(dns_server)]})
    assert texts(dns.lookup("a.test")) == ["10.0.0.1", "10.0.0.2", "2001:db8::1"]
    assert dns_server.count("a.test", wire.TYPE_A) == 1
    assert dns_server.count("a.test", wire.TYPE_AAAA) == 1


def test_family_strategies_send_one_query_type(dns_server: DnsTestServer) -> None:
    dns = resolver({"servers": [server_entry(dns_server)]})
    assert texts(dns.lookup("a.test.", "UseIPv6")) == ["2001:db8::1"]
    assert dns_server.count(qtype=wire.TYPE_A) == 0
    assert texts(dns.lookup("a.test", "UseIPv4")) == ["10.0.0.1", "10.0.0.2"]
    assert dns_server.count(qtype=wire.TYPE_AAAA) == 1


def test_nxdomain_and_empty_answers_are_errors(dns_server: DnsTestServer) -> None:
    dns = resolver({"servers": [server_entry(dns_server)]})
    with pytest.raises(TransportError, match="NXDOMAIN"):
        dns.lookup("missing.test")
    with pytest.raises(TransportError, match="empty response"):
        dns.lookup("v4only.test", "UseIPv6")


@pytest.mark.parametrize("rcode, name", [(3, "NXDOMAIN"), (2, "SERVFAIL"), (5, "REFUSED")])
def test_records_beside_an_error_rcode_are_not_used(rcode: int, name: str) -> None:
    """4.34's getIPs returns the rcode's error and none of the records beside it."""
    with DnsTestServer({"a.test": ["10.0.0.1"]}, rcode=rcode) as server:
        dns = resolver({"servers": [server_entry(server)]})
        with pytest.raises(TransportError, match=name):
            dns.lookup("a.test", "UseIPv4")


def test_cname_chain_answers(clock: FakeClock) -> None:
    with DnsTestServer({"real.test": ["10.2.2.2"]}, cnames={"alias.test": "real.test"}) as server:
        dns = resolver({"servers": [server_entry(server)]}, clock)
        assert texts(dns.lookup("alias.test", "UseIPv4")) == ["10.2.2.2"]


def test_ip_literal_needs_no_query(dns_server: DnsTestServer) -> None:
    dns = resolver({"servers": [server_entry(dns_server)]})
    assert texts(dns.lookup("192.0.2.7")) == ["192.0.2.7"]
    with pytest.raises(TransportError):
        dns.lookup("192.0.2.7", "UseIPv6")
    assert dns_server.count() == 0


def test_unknown_strategy_and_empty_name() -> None:
    dns = resolver({"hosts": {"a.test": "10.0.0.1"}})
    with pytest.raises(ValueError, match="UseIPv4"):
        dns.lookup("a.test", "AsIs")
    with pytest.raises(TransportError):
        dns.lookup(".")


# ---------------------------------------------------------------- cache


def test_cache_honours_the_smallest_ttl(clock: FakeClock) -> None:
    with DnsTestServer(RECORDS, ttl=30) as server:
        dns = resolver({"servers": [server_entry(server)]}, clock)
        assert texts(dns.lookup("a.test", "UseIPv4")) == ["10.0.0.1", "10.0.0.2"]
        clock.now += 29
        assert texts(dns.lookup("a.test", "UseIPv4")) == ["10.0.0.1", "10.0.0.2"]
        assert server.count("a.test") == 1  # answered from the cache
        clock.now += 1
        server.records["a.test"] = [Address.parse("10.0.0.3")]
        assert texts(dns.lookup("a.test", "UseIPv4")) == ["10.0.0.3"]
        assert server.count("a.test") == 2  # expired: asked again


def test_cached_addresses_of_one_family_serve_a_lookup_of_both(clock: FakeClock,
                                                              dns_server: DnsTestServer) -> None:
    """4.34's findIPsForDomain returns what the cache holds for either family when it has
    addresses; only a lookup it cannot serve so asks again."""
    dns = resolver({"servers": [server_entry(dns_server)]}, clock)
    dns.lookup("a.test", "UseIPv4")
    assert texts(dns.lookup("a.test")) == ["10.0.0.1", "10.0.0.2"]  # the cached A, nothing asked
    assert dns_server.count("a.test", wire.TYPE_A) == 1
    assert dns_server.count("a.test", wire.TYPE_AAAA) == 0
    dns.lookup("a.test", "UseIPv6")  # nothing cached for it: AAAA goes out
    assert dns_server.count("a.test", wire.TYPE_AAAA) == 1


def test_a_server_silent_on_aaaa_costs_its_timeout_once(clock: FakeClock) -> None:
    """A review saw every connection wait out the AAAA timeout (4 s) where 4.34 waits once:
    the A answer it got is cached and serves the lookups after it."""
    with DnsTestServer(RECORDS, silent_types=[wire.TYPE_AAAA]) as server:
        dns = resolver({"servers": [server_entry(server)]}, clock)
        assert texts(dns.lookup("a.test")) == ["10.0.0.1", "10.0.0.2"]  # after AAAA timed out
        asked = server.count("a.test")
        for _ in range(3):
            assert texts(dns.lookup("a.test")) == ["10.0.0.1", "10.0.0.2"]
        assert server.count("a.test") == asked


def test_ttl_zero_is_not_cached(clock: FakeClock) -> None:
    with DnsTestServer(RECORDS, ttl=0) as server:
        dns = resolver({"servers": [server_entry(server)]}, clock)
        dns.lookup("v4only.test", "UseIPv4")
        dns.lookup("v4only.test", "UseIPv4")
        assert server.count("v4only.test") == 2


def test_ttl_is_capped_at_600_seconds_as_in_4_34(clock: FakeClock) -> None:
    with DnsTestServer(RECORDS, ttl=86400) as server:
        dns = resolver({"servers": [server_entry(server)]}, clock)
        dns.lookup("v4only.test", "UseIPv4")
        clock.now += 599
        dns.lookup("v4only.test", "UseIPv4")
        assert server.count("v4only.test") == 1
        clock.now += 1
        dns.lookup("v4only.test", "UseIPv4")
        assert server.count("v4only.test") == 2


def test_negative_answers_are_cached_for_the_soa_ttl(clock: FakeClock) -> None:
    with DnsTestServer(RECORDS, negative_ttl=5) as server:
        dns = resolver({"servers": [server_entry(server)]}, clock)
        for _ in range(2):
            with pytest.raises(TransportError, match="NXDOMAIN"):
                dns.lookup("gone.test", "UseIPv4")
        assert server.count("gone.test") == 1
        clock.now += 5
        server.records["gone.test"] = [Address.parse("10.3.3.3")]
        assert texts(dns.lookup("gone.test", "UseIPv4")) == ["10.3.3.3"]


def test_cache_is_bounded(clock: FakeClock) -> None:
    cache = DnsCache(clock, max_entries=2)
    answer = Answer(wire.TYPE_A, 0, (Address.parse("10.0.0.1"),), 60)
    for name in ("a", "b", "c"):
        cache.put((name, wire.TYPE_A), answer)
    assert len(cache) == 2
    assert cache.get(("a", wire.TYPE_A)) is None  # the oldest went first
    assert cache.get(("c", wire.TYPE_A)) == answer


# ---------------------------------------------------------------- hosts


def test_hosts_ip_values_and_prefixes(dns_server: DnsTestServer) -> None:
    dns = resolver({"servers": [server_entry(dns_server)], "hosts": {
        "full:exact.test": "10.9.0.1", "domain:sub.test": "10.9.0.2", "keyword:kw": "10.9.0.3",
        "regexp:^r[0-9]+\\.test$": "10.9.0.4", "plain.test": "2001:db8::9"}})
    assert texts(dns.lookup("exact.test")) == ["10.9.0.1"]
    assert texts(dns.lookup("a.b.sub.test")) == ["10.9.0.2"]
    assert texts(dns.lookup("has-kw-inside.test")) == ["10.9.0.3"]
    assert texts(dns.lookup("r42.test")) == ["10.9.0.4"]
    assert texts(dns.lookup("plain.test")) == ["2001:db8::9"]
    assert dns_server.count() == 0
    with pytest.raises(TransportError, match="NXDOMAIN"):
        dns.lookup("x.plain.test")  # a plain hosts key is a full match: goes to the server


def test_hosts_family_mismatch_is_an_error_without_a_query(dns_server: DnsTestServer) -> None:
    dns = resolver({"servers": [server_entry(dns_server)], "hosts": {"v6.test": "2001:db8::9"}})
    with pytest.raises(TransportError):
        dns.lookup("v6.test", "UseIPv4")
    assert dns_server.count() == 0


def test_hosts_localhost_value_answers_both_families() -> None:
    dns = resolver({"hosts": {"me.test": "127.0.0.1"}})
    assert texts(dns.lookup("me.test")) == ["127.0.0.1", "::1"]
    assert texts(dns.lookup("me.test", "UseIPv6")) == ["::1"]


def test_hosts_domain_value_replaces_the_name(dns_server: DnsTestServer) -> None:
    dns = resolver({"servers": [server_entry(dns_server)], "hosts": {
        "domain:alias.test": "a.test", "chain.test": "hop.test", "hop.test": "10.8.0.1"}})
    assert texts(dns.lookup("www.alias.test", "UseIPv4")) == ["10.0.0.1", "10.0.0.2"]
    assert dns_server.count("a.test") == 1 and dns_server.count("www.alias.test") == 0
    assert texts(dns.lookup("chain.test")) == ["10.8.0.1"]  # followed through hosts


def test_hosts_replacement_loop_is_bounded(dns_server: DnsTestServer) -> None:
    dns = resolver({"servers": [server_entry(dns_server)], "hosts": {
        "loop1.test": "loop2.test", "loop2.test": "loop1.test"}})
    with pytest.raises(TransportError, match="NXDOMAIN"):
        dns.lookup("loop1.test", "UseIPv4")  # 5 hops, then the last name goes to the server
    assert dns_server.count() == 1


# ---------------------------------------------------------------- server order


def test_domains_priority_picks_the_server() -> None:
    with DnsTestServer({"x.corp.test": ["10.1.1.2"], "public.test": ["1.1.1.1"]}) as default, \
            DnsTestServer({"x.corp.test": ["10.7.7.7"]}) as corp:
        dns = resolver({"servers": [server_entry(default),
                                    server_entry(corp, domains=["domain:corp.test"])]})
        assert texts(dns.lookup("x.corp.test", "UseIPv4")) == ["10.7.7.7"]
        assert default.count() == 0
        assert texts(dns.lookup("public.test", "UseIPv4")) == ["1.1.1.1"]
        assert corp.count("public.test") == 0
        assert [c.name for c in dns.ordered_clients("x.corp.test")] == [
            f"UDP:127.0.0.1:{corp.port}", f"UDP:127.0.0.1:{default.port}"]


def test_localhost_server_claims_dotless_and_local_names(dns_server: DnsTestServer) -> None:
    dns = resolver({"servers": [server_entry(dns_server), "localhost"]})
    assert [c.name for c in dns.ordered_clients("printer")][0] == "localhost"
    assert [c.name for c in dns.ordered_clients("nas.lan")][0] == "localhost"
    assert [c.name for c in dns.ordered_clients("a.test")][0] == "localhost"  # .test is local
    assert [c.name for c in dns.ordered_clients("www.example.org")][0] != "localhost"


def test_expect_ips_discards_and_moves_on() -> None:
    with DnsTestServer({"p.test": ["1.1.1.1"]}) as poisoned, \
            DnsTestServer({"p.test": ["10.5.5.5"]}) as honest:
        dns = resolver({"servers": [server_entry(poisoned, expectIps=["10.0.0.0/8"]),
                                    server_entry(honest)]})
        assert texts(dns.lookup("p.test", "UseIPv4")) == ["10.5.5.5"]
        assert poisoned.count() == 1 and honest.count() == 1
        only = resolver({"servers": [server_entry(poisoned, expectIps=["10.0.0.0/8"])]})
        with pytest.raises(TransportError, match="expectIps"):
            only.lookup("p.test", "UseIPv4")


def test_expect_ips_keeps_only_matching_answers() -> None:
    with DnsTestServer({"m.test": ["1.1.1.1", "10.5.5.5", "2001:db8::5"]}) as server:
        dns = resolver({"servers": [server_entry(server, expectIps=["10.0.0.0/8",
                                                                     "2001:db8::/32"])]})
        assert texts(dns.lookup("m.test")) == ["10.5.5.5", "2001:db8::5"]


def test_nxdomain_stops_the_lookup_as_in_4_34() -> None:
    with DnsTestServer({}) as first, DnsTestServer({"n.test": ["10.6.6.6"]}) as second:
        dns = resolver({"servers": [server_entry(first), server_entry(second)]})
        with pytest.raises(TransportError, match="NXDOMAIN"):
            dns.lookup("n.test", "UseIPv4")
        assert second.count() == 0


# ---------------------------------------------------------------- clientIp


def test_client_ip_is_sent_as_edns_client_subnet() -> None:
    with DnsTestServer(RECORDS) as top, DnsTestServer(RECORDS) as own:
        dns = resolver({"clientIp": "203.0.113.77", "servers": [
            server_entry(top), server_entry(own, clientIp="2001:db8:aa:bb::1")]})
        dns.lookup("a.test", "UseIPv4")
        assert top.queries[0].client_subnet() == (1, 24, bytes([203, 0, 113]))
        own_dns = resolver({"clientIp": "203.0.113.77", "servers": [
            server_entry(own, clientIp="2001:db8:aa:bb::1")]})
        own_dns.lookup("a.test", "UseIPv4")
        family, prefix, address = own.queries[0].client_subnet()
        assert (family, prefix) == (2, 96)
        assert address == bytes.fromhex("20010db8 00aa 00bb 0000 0000")
        plain = resolver({"servers": [server_entry(top)]})
        plain.lookup("v4only.test", "UseIPv4")
        assert top.queries[-1].client_subnet() is None


# ---------------------------------------------------------------- timeouts


def test_silent_server_times_out_and_the_next_one_answers(dns_server: DnsTestServer) -> None:
    with DnsTestServer(RECORDS, silent=True) as silent:
        dns = resolver({"servers": [server_entry(silent), server_entry(dns_server)]})
        started = time.monotonic()
        assert texts(dns.lookup("a.test", "UseIPv4")) == ["10.0.0.1", "10.0.0.2"]
        elapsed = time.monotonic() - started
        assert SHORT_TIMEOUT * 0.9 <= elapsed < SHORT_TIMEOUT + 1.0
        assert silent.count("a.test", wire.TYPE_A) == 2  # sent, then resent half-way


def test_all_servers_silent_fails_within_the_bound() -> None:
    with DnsTestServer(silent=True) as one, DnsTestServer(silent=True) as two:
        dns = resolver({"servers": [server_entry(one), server_entry(two)]})
        started = time.monotonic()
        with pytest.raises(TransportError, match="no answer"):
            dns.lookup("a.test")
        assert time.monotonic() - started < 2 * SHORT_TIMEOUT + 1.0


def test_closed_port_fails_fast_and_moves_on(dns_server: DnsTestServer) -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: the kernel answers ICMP port unreachable
    dns = resolver({"servers": [{"address": "127.0.0.1", "port": port},
                                server_entry(dns_server)]}, timeout=3.0)
    started = time.monotonic()
    assert texts(dns.lookup("a.test", "UseIPv4")) == ["10.0.0.1", "10.0.0.2"]
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("flood", [0, 150], ids=["few", "flood"])
def test_spoofed_and_garbage_datagrams_are_ignored(flood: int) -> None:
    """A reply with the wrong ID or question, or garbage, does not count as the answer; nor
    does a flood of junk hide the answer behind it (64 datagrams were read at most, so
    ~130 junk datagrams made a name fail; 4.34 reads until its deadline; found by a
    review)."""
    responder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with responder:
        responder.bind(("127.0.0.1", 0))
        responder.settimeout(2.0)
        server = UdpNameServer("127.0.0.1", responder.getsockname()[1], timeout=SHORT_TIMEOUT,
                               attempts=1)
        result: List[Any] = []
        worker = threading.Thread(target=lambda: result.append(
            server.exchange("s.test", [wire.TYPE_A])), name="dns-exchange")
        worker.start()
        data, peer = responder.recvfrom(2048)
        query = dns.message.from_wire(data)  # dnspython: not the codec under test
        good = dns.message.make_response(query)
        good.answer.append(dns.rrset.from_text("s.test.", 60, "IN", "A", "10.4.4.4"))
        wrong_id = dns.message.from_wire(good.to_wire())
        wrong_id.id ^= 1
        wrong_name = dns.message.make_response(dns.message.make_query("t.test", "A", id=query.id))
        wrong_name.answer.append(good.answer[0])
        junk = (b"\x00garbage", wrong_id.to_wire(), wrong_name.to_wire()) * max(1, flood // 3)
        for datagram in junk + (good.to_wire(),):
            responder.sendto(datagram, peer)
        worker.join(5.0)
    assert not worker.is_alive()
    answers = result[0]
    assert list(answers) == [wire.TYPE_A]
    assert answers[wire.TYPE_A].addresses == (Address.parse("10.4.4.4"),)


# ---------------------------------------------------------------- system resolver


def test_no_servers_means_the_system_resolver() -> None:
    dns = resolver({})
    assert [c.name for c in dns.clients] == ["localhost"]
    assert "127.0.0.1" in texts(dns.lookup("localhost", "UseIPv4"))


def test_local_name_server_orders_ipv4_first() -> None:
    found = LocalNameServer().resolve("localhost", True, True)
    assert found and found[0].value == "127.0.0.1"
    with pytest.raises(TransportError):  # refused locally (IDNA: label too long), no network
        LocalNameServer().resolve("a" * 64 + ".test", True, True)


@pytest.mark.parametrize("name", ["127.1", "0x7f.0.0.1", "2130706433"])
def test_the_system_resolver_server_finds_no_legacy_numeric_name(name: str) -> None:
    """As Go's resolver, which asks DNS for such a name (freedom UseIP*'s path; compared
    with 4.34 in test_freedom_resolution_differential.py for AsIs)."""
    with pytest.raises(TransportError, match="no such host"):
        LocalNameServer().resolve(name, True, True)
    assert LocalNameServer().resolve("localhost", True, False)
