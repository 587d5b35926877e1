"""The router end to end (issue 5): real connections decide real routes.

Each test runs v2sync in this process with two outbounds, freedom ``direct`` (first, so the
default) and blackhole ``block`` answering 403, and sends real traffic through it: curl via
SOCKS5 or the HTTP inbound, raw SOCKS tunnels, PySocks UDP, or a second v2sync as a VMess
client. A 200 (or an echo) from the in-test origin means direct, the blackhole's 403 means
block. Names under ``.test`` resolve to 127.0.0.1 through ``dns.hosts`` or a UDP DNS server
started by the test; blocked names need no answer, since blocked requests never dial.

Every config run here is first given to the real ``v2ray -test`` (with the same .dat files
when it uses geo rules), so v2sync is only ever tested on configs 4.34 accepts.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytest

from app.dns.dns_test_server import DnsTestServer
from scenarios.helpers_scenarios import (BLACKHOLE_403, IO_TIMEOUT, freedom, http_inbound, port_of,
                                         running_instance, socks_inbound)
from scenarios.routing_helpers import (BLOCK, DIRECT, FORBIDDEN, OK, V2RayConfigCheck,
                                       balanced_rule, block, client_hello, direct, dns_server,
                                       http_proxy_status, make_asset_dir, point_assets_at,
                                       range_around, routed_config, rule, sniffing_socks,
                                       socks_status, tcp_round_trip, udp_round_trip)
from scenarios.vmess_helpers import (STRANGER_ID, USER_ID, vmess_client_entry, vmess_inbound,
                                     vmess_outbound)
from support.peers import HttpOrigin, TcpEchoServer, UdpEchoServer
from support.procs import missing_peer

from v2sync.app.dns import wire

HOSTS_TEST = {"domain:test": "127.0.0.1"}  # every *.test name -> the origin's address
UDP_SILENCE = 1.5  # seconds a blocked datagram is given to (not) come back


@pytest.fixture(scope="module")
def v2ray_check(v2ray_bin: str, tmp_path_factory: pytest.TempPathFactory) -> V2RayConfigCheck:
    return V2RayConfigCheck(v2ray_bin, tmp_path_factory.mktemp("v2ray-test"))


@pytest.fixture(scope="module")
def origin() -> Iterator[HttpOrigin]:
    with HttpOrigin() as server:
        yield server


@pytest.fixture(scope="module")
def origin_alt() -> Iterator[HttpOrigin]:
    """An origin on 127.0.0.2: another loopback address, outside 127.0.0.1/32."""
    with HttpOrigin(host="127.0.0.2") as server:
        yield server


@pytest.fixture(scope="module")
def origin6() -> Iterator[HttpOrigin]:
    """An origin on ::1: loopback, but outside 127.0.0.0/8."""
    try:
        server = HttpOrigin(host="::1")
        server.start()
    except OSError as error:
        missing_peer(f"no IPv6 loopback: {error}")  # fails under CI, skips elsewhere
    try:
        yield server
    finally:
        server.close()


def name_url(name: str, origin: HttpOrigin) -> str:
    return f"http://{name}:{origin.port}/"


def last_host(origin: HttpOrigin) -> str:
    return origin.requests[-1].header("Host") or ""


# -- domain rules: every prefix ---------------------------------------------------------------

DOMAIN_RULES = [
    rule(BLOCK, domain=["blockword"]),                          # plain: a substring
    rule(BLOCK, domain=["domain:blocked.test"]),
    rule(BLOCK, domain=["full:exact.test"]),
    rule(BLOCK, domain=[r"regexp:^re[0-9]+\.test$"]),
    rule(BLOCK, domain=["keyword:kwd"]),
    rule(BLOCK, domain=["geosite:test"]),                       # tests/vectors/GEODATA.md
    rule(BLOCK, domain=["ext:geosite-test.dat:category-ads"]),
]

DOMAIN_CASES = [
    ("plain", "x-blockword-y.test", FORBIDDEN),
    ("plain-miss", "blockwor.test", OK),
    ("domain-self", "blocked.test", FORBIDDEN),
    ("domain-sub", "a.b.blocked.test", FORBIDDEN),
    ("domain-miss", "notblocked.test", OK),
    ("full", "exact.test", FORBIDDEN),
    ("full-miss-sub", "www.exact.test", OK),
    ("regexp", "re42.test", FORBIDDEN),
    ("regexp-miss", "re42x.test", OK),
    ("keyword", "a.kwd-b.test", FORBIDDEN),
    ("keyword-miss", "kw-d.test", OK),
    ("geosite-domain", "www.example.com", FORBIDDEN),
    ("geosite-full", "www.example.org", FORBIDDEN),
    ("geosite-keyword", "my-tracker.test", FORBIDDEN),
    ("geosite-regexp", "ad7.example.net", FORBIDDEN),
    ("geosite-miss", "example.test", OK),
    ("ext-geosite", "x.doubleclick.example", FORBIDDEN),
]


@pytest.fixture(scope="module")
def domain_proxy(origin: HttpOrigin, v2ray_check: V2RayConfigCheck,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    assets = make_asset_dir(tmp_path_factory.mktemp("assets"))
    config = routed_config([socks_inbound()], DOMAIN_RULES, dns={"hosts": HOSTS_TEST})
    v2ray_check.check(config, assets)
    with pytest.MonkeyPatch.context() as patch:
        point_assets_at(patch, assets)
        with running_instance(config) as instance:
            yield port_of(instance, "socks-in")


@pytest.mark.parametrize("name, expected", [c[1:] for c in DOMAIN_CASES],
                         ids=[c[0] for c in DOMAIN_CASES])
def test_domain_rule_prefixes(domain_proxy: int, origin: HttpOrigin, name: str,
                              expected: int) -> None:
    assert socks_status(domain_proxy, name_url(name, origin)) == expected
    if expected == OK:  # freedom really went to the origin, for that name
        assert last_host(origin) == f"{name}:{origin.port}"


# -- ip rules ---------------------------------------------------------------------------------

def test_cidr_rule_matches_ip_targets(origin: HttpOrigin, origin6: HttpOrigin,
                                      v2ray_check: V2RayConfigCheck) -> None:
    config = routed_config([socks_inbound()], [rule(BLOCK, ip=["127.0.0.0/8"])],
                           dns={"hosts": HOSTS_TEST})
    v2ray_check.check(config)
    with running_instance(config) as instance:
        proxy = port_of(instance, "socks-in")
        assert socks_status(proxy, origin.url + "/") == FORBIDDEN
        assert socks_status(proxy, origin6.url + "/") == OK
        # AsIs: a name is never resolved for routing, so the CIDR does not see it
        assert socks_status(proxy, name_url("allowed.test", origin)) == OK


def test_single_ip_rule(origin: HttpOrigin, origin_alt: HttpOrigin,
                        v2ray_check: V2RayConfigCheck) -> None:
    config = routed_config([socks_inbound()], [rule(BLOCK, ip=["127.0.0.1"])])
    v2ray_check.check(config)
    with running_instance(config) as instance:
        proxy = port_of(instance, "socks-in")
        assert socks_status(proxy, origin.url + "/") == FORBIDDEN
        assert socks_status(proxy, origin_alt.url + "/") == OK


def test_geoip_private_needs_no_file(origin: HttpOrigin, origin6: HttpOrigin, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     v2ray_check: V2RayConfigCheck) -> None:
    config = routed_config([socks_inbound()], [rule(BLOCK, ip=["geoip:private"])],
                           dns={"hosts": HOSTS_TEST})
    # 4.34 only knows "private" from geoip.dat; v2sync has it built in.
    v2ray_check.check(config, make_asset_dir(tmp_path / "with-dat"))
    point_assets_at(monkeypatch, make_asset_dir(tmp_path / "empty", with_vectors=False))
    with running_instance(config) as instance:
        proxy = port_of(instance, "socks-in")
        assert socks_status(proxy, origin.url + "/") == FORBIDDEN
        assert socks_status(proxy, origin6.url + "/") == FORBIDDEN
        assert socks_status(proxy, name_url("allowed.test", origin)) == OK


def test_geoip_lists_from_the_test_dat(origin: HttpOrigin, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       v2ray_check: V2RayConfigCheck) -> None:
    assets = make_asset_dir(tmp_path / "assets")
    # "direct" is pinned to the loopback origin: should a rule ever miss, the request gets
    # the origin's 200 instead of leaving this machine for a documentation address.
    pinned = freedom(DIRECT, redirect=f"127.0.0.1:{origin.port}")
    config = routed_config([socks_inbound()], [rule(BLOCK, ip=["geoip:test"]),
                                               rule(BLOCK, ip=["ext:geoip-test.dat:cn"])],
                           outbounds=[pinned, block()])
    v2ray_check.check(config, assets)
    point_assets_at(monkeypatch, assets)
    with running_instance(config) as instance:
        proxy = port_of(instance, "socks-in")
        # documentation addresses: blocked, so nothing is dialled (and direct is pinned)
        assert socks_status(proxy, "http://198.51.100.7/") == FORBIDDEN   # TEST
        assert socks_status(proxy, "http://192.0.2.200/") == FORBIDDEN    # CN, via ext:
        assert socks_status(proxy, origin.url + "/") == OK                # in neither list


# -- ports, network, source, inbound ----------------------------------------------------------

def test_port_rule(origin: HttpOrigin, v2ray_check: V2RayConfigCheck) -> None:
    with HttpOrigin() as other:
        low, high = range_around(origin.port, other.port)
        config = routed_config([socks_inbound()], [rule(BLOCK, port=f"80,{low}-{high}")])
        v2ray_check.check(config)
        with running_instance(config) as instance:
            proxy = port_of(instance, "socks-in")
            assert socks_status(proxy, origin.url + "/") == FORBIDDEN
            assert socks_status(proxy, other.url + "/") == OK
            assert socks_status(proxy, "http://127.0.0.2/") == FORBIDDEN  # port 80, never dialled


# Below the kernel's ephemeral range (32768-60999 by default), so only --local-port uses them.
SOURCE_PORTS = "20000-20050"


def test_source_port_rule(origin: HttpOrigin, v2ray_check: V2RayConfigCheck) -> None:
    config = routed_config([socks_inbound()], [rule(BLOCK, sourcePort=SOURCE_PORTS)])
    v2ray_check.check(config)
    with running_instance(config) as instance:
        proxy = port_of(instance, "socks-in")
        assert socks_status(proxy, origin.url + "/", "--local-port", SOURCE_PORTS) == FORBIDDEN
        assert socks_status(proxy, origin.url + "/") == OK


@pytest.mark.parametrize("blocked", ["udp", "tcp"])
def test_network_rule(blocked: str, v2ray_check: V2RayConfigCheck) -> None:
    payload = b"which network?"
    inbound = socks_inbound(udp=True, ip="127.0.0.1")
    config = routed_config([inbound], [rule(BLOCK, network=blocked)])
    v2ray_check.check(config)
    with TcpEchoServer() as tcp_echo, UdpEchoServer() as udp_echo:
        with running_instance(config) as instance:
            proxy = port_of(instance, "socks-in")
            tcp_reply = tcp_round_trip(proxy, tcp_echo, payload)
            udp_reply = udp_round_trip(proxy, udp_echo, payload,
                                        UDP_SILENCE if blocked == "udp" else IO_TIMEOUT)
        if blocked == "udp":
            assert tcp_reply == payload
            assert udp_reply != payload and udp_echo.datagrams == 0
        else:
            assert tcp_reply == BLACKHOLE_403 and tcp_echo.accepted == 0
            assert udp_reply == payload and udp_echo.datagrams == 1


def test_source_rule(origin: HttpOrigin, v2ray_check: V2RayConfigCheck) -> None:
    config = routed_config([socks_inbound()], [rule(BLOCK, source=["127.0.0.1/32"])])
    v2ray_check.check(config)
    with running_instance(config) as instance:
        proxy = port_of(instance, "socks-in")
        assert socks_status(proxy, origin.url + "/") == FORBIDDEN
        # from another loopback address: outside 127.0.0.1/32
        assert socks_status(proxy, origin.url + "/", "--interface", "127.0.0.2") == OK


def test_inbound_tag_rule(origin: HttpOrigin, v2ray_check: V2RayConfigCheck) -> None:
    config = routed_config([socks_inbound("socks-a"), socks_inbound("socks-b")],
                           [rule(BLOCK, inboundTag=["socks-b"])])
    v2ray_check.check(config)
    with running_instance(config) as instance:
        assert socks_status(port_of(instance, "socks-a"), origin.url + "/") == OK
        assert socks_status(port_of(instance, "socks-b"), origin.url + "/") == FORBIDDEN


# -- protocol rules ---------------------------------------------------------------------------

def test_protocol_http_matches_sniffed_http1_and_the_http_inbound(
        origin: HttpOrigin, v2ray_check: V2RayConfigCheck) -> None:
    inbounds = [sniffing_socks("socks-sniff", "http"), socks_inbound("socks-plain"),
                http_inbound("http-in")]
    config = routed_config(inbounds, [rule(BLOCK, protocol=["http"])])
    v2ray_check.check(config)
    with running_instance(config) as instance:
        url = origin.url + "/"
        assert socks_status(port_of(instance, "socks-sniff"), url) == FORBIDDEN  # "http1"
        assert http_proxy_status(port_of(instance, "http-in"), url) == FORBIDDEN  # "http/1.1"
        assert socks_status(port_of(instance, "socks-plain"), url) == OK  # no protocol known


def test_protocol_tls_matches_a_sniffed_client_hello(v2ray_check: V2RayConfigCheck) -> None:
    config = routed_config([sniffing_socks("socks-in", "tls")], [rule(BLOCK, protocol=["tls"])],
                           dns={"hosts": HOSTS_TEST})
    v2ray_check.check(config)
    with TcpEchoServer() as echo:
        with running_instance(config) as instance:
            proxy = port_of(instance, "socks-in")
            assert tcp_round_trip(proxy, echo, client_hello("secure.test")) == BLACKHOLE_403
            assert echo.accepted == 0
            assert tcp_round_trip(proxy, echo, b"not a handshake") == b"not a handshake"
        assert echo.accepted == 1


# -- user rules (VMess), balancers ------------------------------------------------------------

def test_user_rules_by_vmess_email(origin: HttpOrigin, v2ray_check: V2RayConfigCheck) -> None:
    """SOCKS a/b -> vmess user A/B -> one vmess inbound whose router blocks a@test."""
    clients = [vmess_client_entry(USER_ID, email="a@test"),
               vmess_client_entry(STRANGER_ID, email="b@test")]
    server_config = routed_config([vmess_inbound(clients)], [rule(BLOCK, user=["a@test"])])
    v2ray_check.check(server_config)
    with running_instance(server_config) as server:
        vmess_port = port_of(server, "vmess-in")
        outbounds = [vmess_outbound(vmess_port, "aes-128-gcm", 0, tag="vmess-a", user_id=USER_ID),
                     vmess_outbound(vmess_port, "aes-128-gcm", 0, tag="vmess-b",
                                    user_id=STRANGER_ID)]
        client_config = routed_config([socks_inbound("socks-a"), socks_inbound("socks-b")],
                                      [rule("vmess-b", inboundTag=["socks-b"])],
                                      outbounds=outbounds)
        v2ray_check.check(client_config)
        with running_instance(client_config) as client:
            assert socks_status(port_of(client, "socks-a"), origin.url + "/") == FORBIDDEN
            assert socks_status(port_of(client, "socks-b"), origin.url + "/") == OK


def test_balancer_picks_among_selected_outbounds(origin: HttpOrigin,
                                                 caplog: pytest.LogCaptureFixture,
                                                 v2ray_check: V2RayConfigCheck) -> None:
    caplog.set_level(logging.INFO, logger="v2sync.access")
    requests = 6
    config = routed_config([socks_inbound()], [balanced_rule("pool", network="tcp")],
                           outbounds=[block(), direct("direct-1"), direct("direct-2")],
                           balancers=[{"tag": "pool", "selector": ["direct-"]}])
    v2ray_check.check(config)
    with running_instance(config) as instance:
        proxy = port_of(instance, "socks-in")
        # the default (first) outbound is the blackhole: a 200 means the balancer chose
        assert [socks_status(proxy, origin.url + "/") for _ in range(requests)] == [OK] * requests
    routes = [line.rsplit("[", 1)[1] for line in caplog.messages if " accepted " in line]
    assert len(routes) == requests
    assert set(routes) <= {"direct-1]", "direct-2]"}


# -- domainStrategy, and one resolution per connection ----------------------------------------

STRATEGY_CASES = [
    # (routing strategy, rules in order, expected status for web.test)
    ("AsIs", "ip-first", OK),             # the ip rule never sees a name; the domain rule wins
    ("IPIfNonMatch", "ip-first", OK),     # the domain rule matches in the first pass
    ("IPOnDemand", "ip-first", FORBIDDEN),  # the ip rule is reached first: resolve, 127/8
    ("AsIs", "domain-miss", OK),
    ("IPIfNonMatch", "domain-miss", FORBIDDEN),  # nothing matched: resolve and retry
    ("IPOnDemand", "domain-miss", FORBIDDEN),
]
RULE_ORDERS = {
    "ip-first": [rule(BLOCK, ip=["127.0.0.0/8"]), rule(DIRECT, domain=["domain:web.test"])],
    "domain-miss": [rule(DIRECT, domain=["domain:elsewhere.test"]),
                    rule(BLOCK, ip=["127.0.0.0/8"])],
}


@pytest.mark.parametrize("strategy, order, expected", STRATEGY_CASES,
                         ids=[f"{s}-{o}" for s, o, _ in STRATEGY_CASES])
def test_domain_strategy_decides_with_a_resolved_name(strategy: str, order: str, expected: int,
                                                      origin: HttpOrigin,
                                                      v2ray_check: V2RayConfigCheck) -> None:
    with DnsTestServer({"web.test": ["127.0.0.1"]}, ttl=0) as dns:
        config = routed_config([socks_inbound()], RULE_ORDERS[order], strategy=strategy,
                               dns={"servers": [dns_server(dns.port)]})
        v2ray_check.check(config)
        with running_instance(config) as instance:
            status = socks_status(port_of(instance, "socks-in"), name_url("web.test", origin))
        assert status == expected
        # one resolution either way: the router's, or (when it did not resolve) freedom's
        assert dns.count("web.test", wire.TYPE_A) == 1


NO_ANSWER = 0  # curl's status when the proxy closes without an answer
REUSE_CASES = [
    # (routing strategy, freedom strategy, status, A queries for web.test)
    ("AsIs", "UseIPv4", FORBIDDEN, 0),   # not resolved: the ip rule misses, the default blocks
    ("IPIfNonMatch", "UseIPv4", OK, 1),
    # AsIs dials the name through the system resolver, which knows no web.test, whatever
    # the router looked up (as 4.34: test_freedom_resolution_differential.py)
    ("IPIfNonMatch", "AsIs", NO_ANSWER, 1),
    ("IPOnDemand", "UseIPv4", OK, 1),
    ("IPOnDemand", "AsIs", NO_ANSWER, 1),
]


@pytest.mark.parametrize("strategy, dial_strategy, expected, queries", REUSE_CASES,
                         ids=[f"{s}-freedom{d}" for s, d, _, _ in REUSE_CASES])
def test_the_dial_reuses_the_routers_answer(strategy: str, dial_strategy: str, expected: int,
                                            queries: int, origin: HttpOrigin,
                                            v2ray_check: V2RayConfigCheck) -> None:
    # TTL 0: nothing is cached, so a second lookup by freedom would reach the server again.
    with DnsTestServer({"web.test": ["127.0.0.1"]}, ttl=0) as dns:
        config = routed_config([socks_inbound()], [rule(DIRECT, ip=["127.0.0.0/8"])],
                               outbounds=[block(), direct(strategy=dial_strategy)],
                               strategy=strategy, dns={"servers": [dns_server(dns.port)]})
        v2ray_check.check(config)
        with running_instance(config) as instance:
            status = socks_status(port_of(instance, "socks-in"), name_url("web.test", origin))
        assert status == expected
        assert dns.count("web.test", wire.TYPE_A) == queries
        # the router's lookup asks for every family (UseIP), once
        assert dns.count("web.test", wire.TYPE_AAAA) <= queries
        if queries == 0:
            assert dns.count() == 0
    if expected == OK:
        assert last_host(origin) == f"web.test:{origin.port}"


def test_dns_expect_ips_moves_on_to_the_next_server(origin: HttpOrigin,
                                                    v2ray_check: V2RayConfigCheck) -> None:
    # The first server's answer (127.0.0.3, where nothing listens) is outside its expectIps.
    with DnsTestServer({"web.test": ["127.0.0.3"]}) as first, \
            DnsTestServer({"web.test": ["127.0.0.1"]}) as second:
        servers = [dns_server(first.port, expectIps=["127.0.0.1/32"]), dns_server(second.port)]
        config = routed_config([socks_inbound()], [rule(BLOCK, domain=["domain:blocked.test"])],
                               dns={"servers": servers})
        v2ray_check.check(config)
        with running_instance(config) as instance:
            assert socks_status(port_of(instance, "socks-in"), name_url("web.test", origin)) == OK
        assert first.count("web.test", wire.TYPE_A) == 1
        assert second.count("web.test", wire.TYPE_A) == 1
    assert last_host(origin) == f"web.test:{origin.port}"
