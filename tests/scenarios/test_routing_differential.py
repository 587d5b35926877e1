"""Every rule kind, decided by the real v2ray 4.34 and by v2sync on the same requests (issue 21).

One config with a rule per kind (domain prefixes, geosite with and without attributes, ext:
lists, IPs, geoip, ports, network, source, sourcePort, user, inboundTag, protocol, a domain
and port combined, a balancer) runs in one v2ray and one v2sync for the whole module; each
request goes through both and the outbound that answered is compared (see
scenarios/differential.py). The .dat files are written by protobuf from v2ray's own message
definitions (tools/geodata_vectors.py), not by v2sync.
"""
from __future__ import annotations

import struct

from typing import Dict, Iterator, List

import pytest

from scenarios.differential import (BLOCK, RoutedPair, Request, asset_dir, describe,
                                    free_source_port)
from scenarios.routing_helpers import client_hello

# Below the ephemeral range, so only an explicit bind takes one; wide, since a port a client
# closed stays in TIME_WAIT for a minute.
SOURCE_PORTS = (23140, 23179)
AND_PORTS = (23180, 23219)
BALANCED_REQUESTS = 16  # both pool members come up unless the chance 2 * 2**-16 strikes

INBOUNDS = [
    {"tag": "socks-in", "protocol": "socks", "settings": {"auth": "noauth", "udp": True}},
    {"tag": "socks-auth", "protocol": "socks",
     "settings": {"auth": "password", "accounts": [{"user": "alice", "pass": "a-pw"},
                                                   {"user": "bob", "pass": "b-pw"}]}},
    {"tag": "socks-tagged", "protocol": "socks", "settings": {"auth": "noauth"}},
    {"tag": "socks-sniff", "protocol": "socks", "settings": {"auth": "noauth"},
     "sniffing": {"enabled": True, "destOverride": ["http", "tls"]}},
    {"tag": "socks-bal", "protocol": "socks", "settings": {"auth": "noauth"}},
    {"tag": "http-auth", "protocol": "http",
     "settings": {"accounts": [{"user": "alice", "pass": "a-pw"}, {"user": "carol", "pass": "c-pw"}]}},
]


def rule(tag: str, **fields: object) -> Dict[str, object]:
    return {"type": "field", "outboundTag": tag, **fields}


RULES = [
    {"type": "field", "inboundTag": ["socks-bal"], "balancerTag": "pool"},
    rule("inbound", inboundTag=["socks-tagged"]),
    rule("user", user=["alice"]),
    rule("and", domain=["domain:and.example"], port="8443"),
    rule("full", domain=["full:full.example"]),
    rule("upper", domain=["full:Upper.Example", "domain:MiXeD.example"]),
    rule("ext-upper", domain=["ext:geosite-test.dat:TEST@CN"]),
    rule("domain", domain=["domain:dom.example"]),
    rule("keyword", domain=["keyword:kwd"]),
    rule("regexp", domain=[r"regexp:^re[0-9]+\.example$"]),
    rule("plain", domain=["plainword"]),
    rule("dotless", domain=["dotless:intra", "dotless:"]),
    rule("geosite-ads", domain=["geosite:test@ads"]),
    rule("geosite", domain=["geosite:test"]),
    rule("ext-site", domain=["ext:geosite-test.dat:category-ads"]),
    rule(BLOCK, domain=["blocked.example"]),
    rule("ip", ip=["192.0.2.1", "2001:db8:1::/48", "10.9.0.0/16"]),
    rule("geoip", ip=["geoip:cn"]),
    rule("private", ip=["geoip:private"]),
    rule("ext-ip", ip=["ext-ip:geoip-test.dat:test"]),
    rule("net-both", network="tcp,udp", port=4444),
    rule("udp", network="udp"),
    rule("port", port="1000-2000,3333"),
    rule("source", source=["127.0.0.2"]),
    rule("sport", sourcePort=f"{SOURCE_PORTS[0]}-{SOURCE_PORTS[1]}"),
    rule("src-and-port", source=["127.0.0.4/30"],  # a list of two ranges: the "a-b,c-d" form
         sourcePort=f"{AND_PORTS[0]}-{AND_PORTS[0] + 19},{AND_PORTS[0] + 20}-{AND_PORTS[1]}"),
    rule("http", protocol=["http"]),
    rule("tls", protocol=["tls"]),
    rule("bt", protocol=["bittorrent"]),
]
OUTBOUNDS = ["direct", "inbound", "user", "and", "full", "upper", "ext-upper", "net-both",
             "src-and-port", "domain", "keyword", "regexp", "plain",
             "dotless", "geosite-ads", "geosite", "ext-site", "ip", "geoip", "private", "ext-ip",
             "udp", "port", "source", "sport", "http", "tls", "bt", "px-1", "px-2"]
UDP_OUTBOUNDS = ["direct", "udp", "ip", "port", "net-both"]
ROUTING = {"domainStrategy": "AsIs", "rules": RULES,
           "balancers": [{"tag": "pool", "selector": ["px-"]}]}


def socks(host: str, port: int = 80, **kwargs: object) -> Request:
    return Request("socks-in", host, port, **kwargs)  # type: ignore[arg-type]


def http_get(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: difftest\r\n\r\n".encode()


def hello_with_name(name: bytes) -> bytes:
    """A minimal TLS ClientHello whose SNI is ``name`` as given (ssl refuses odd names)."""
    names = b"\x00" + struct.pack("!H", len(name)) + name
    sni = struct.pack("!HHH", 0, len(names) + 2, len(names)) + names
    body = (b"\x03\x03" + b"R" * 32 + b"\x00" + struct.pack("!H", 4) + b"\x13\x01\x00\x2f"
            + b"\x01\x00" + struct.pack("!H", len(sni)) + sni)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


DOMAIN_CASES = [
    socks("full.example"), socks("www.full.example"), socks("FULL.example"),
    socks("dom.example"), socks("a.b.dom.example"), socks("xdom.example"),
    socks("my-kwd-site.example"), socks("re42.example"), socks("re.example"), socks("xre42.example"),
    socks("aplainwordz.example"), socks("intranet"), socks("localbox"), socks("intranet.example"),
    socks("ad7.example.net"), socks("ads.example.net"), socks("www.example.com"), socks("example.com"),
    socks("www.example.org"), socks("example.org"), socks("mytracker.example"),
    socks("doubleclick.example"), socks("x.doubleclick.example"), socks("blocked.example"),
    socks("and.example", 8443), socks("x.and.example", 8443), socks("and.example", 80),
    socks("unlisted.example", 3333), socks("unlisted.example"),
    socks("upper.example"), socks("UPPER.EXAMPLE"), socks("Upper.Example"), socks("x.mixed.example"),
    socks("MIXED.EXAMPLE"), socks("x.MiXeD.example"),
    socks("AD7.EXAMPLE.NET"), socks("Www.Example.Com"),
    Request("socks-in", "192.0.2.1", domain_atyp=True), Request("socks-in", "2001:db8:1::5", domain_atyp=True),
    Request("socks-in", "010.009.001.001", domain_atyp=True),
    # Go's ParseAddress trims white space around an IP
    Request("socks-in", "192.0.2.1 ", domain_atyp=True),
    Request("socks-in", "2001:db8:1::5\t", domain_atyp=True),
]
IP_CASES = [
    socks("192.0.2.1"), socks("2001:db8:1::5"), socks("10.9.1.1"), socks("203.0.113.9"),
    socks("192.0.2.200"), socks("192.0.2.100"), socks("10.1.2.3"), socks("127.0.0.5"), socks("::1"),
    socks("172.16.0.1"), socks("198.51.100.7"), socks("2001:db8::9"), socks("8.8.8.8"),
    socks("8.8.8.8", 1000), socks("8.8.8.8", 2000), socks("8.8.8.8", 2001), socks("8.8.8.8", 3333),
    socks("203.0.113.9", 1500), socks("8.8.8.8", 4444), socks("::ffff:192.0.2.1"),
    socks("::ffff:203.0.113.9"), socks("0.0.0.0"), socks("::"),
]
OTHER_CASES = [
    Request("socks-in", "8.8.8.8", source=("127.0.0.2", 0)),
    Request("socks-in", "full.example", source=("127.0.0.2", 0)),
    Request("socks-auth", "8.8.8.8", user=("alice", "a-pw")),
    Request("socks-auth", "8.8.8.8", user=("bob", "b-pw")),
    Request("socks-auth", "full.example", user=("alice", "a-pw")),
    Request("http-auth", "8.8.8.8", user=("alice", "a-pw"), http=True),
    Request("http-auth", "full.example", 443, user=("carol", "c-pw"), http=True),
    Request("http-auth", "8.8.8.8", user=("alice", "wrong"), http=True),
    Request("socks-tagged", "8.8.8.8"), Request("socks-tagged", "full.example"),
    Request("socks-sniff", "8.8.8.8", payload=http_get("proto.example")),
    Request("socks-sniff", "8.8.8.8", payload=http_get("full.example")),
    Request("socks-sniff", "8.8.8.8", 443, payload=client_hello("tls.example")),
    Request("socks-sniff", "8.8.8.8", 443, payload=client_hello("dom.example")),
    # Every Host line counts, the last winning; an SNI is read as Go's ParseAddress reads it.
    Request("socks-sniff", "8.8.8.8", payload=b"GET / HTTP/1.1\r\nHost: other.example\r\n"
            b"Host: full.example\r\n\r\n"),
    Request("socks-sniff", "8.8.8.8", 443, payload=hello_with_name(b" full.example ")),
    Request("socks-sniff", "8.8.8.8", 443, payload=hello_with_name(b"\tdom.example")),
    Request("socks-sniff", "8.8.8.8", 443, payload=hello_with_name(b"[full.example]")),
    # A Host lower-cased as Go's ToLower (Unicode), its port in any base ParseUint(.., 0, ..)
    # takes; a name that is not ASCII sniffed as 4.34 sniffs it (a review found these).
    Request("socks-sniff", "8.8.8.8", payload=http_get("full.example:0x50")),
    Request("socks-sniff", "8.8.8.8", payload=http_get("full.example:0080")),
    Request("socks-sniff", "8.8.8.8", payload=http_get("my-\u212awd-site.example")),
    Request("socks-sniff", "8.8.8.8", payload=http_get("x\u00e4-kwd.example")),
    Request("socks-sniff", "8.8.8.8", 443, payload=hello_with_name("\u00e4.dom.example".encode())),
    Request("socks-sniff", "full.example", payload=b"not a protocol v2ray knows\r\n"),
    Request("socks-sniff", "198.51.100.7", payload=http_get("proto.example")),
    Request("socks-sniff", "8.8.8.8", 6881, payload=b"\x13BitTorrent protocol" + bytes(8) + b"x" * 40),
    Request("socks-sniff", "8.8.8.8", 6881, payload=b"\x13BitTorrent protocoX" + bytes(8)),
    # A SOCKS4a host is a name whatever it holds (4.34's handshake4): `ip` rules miss it.
    Request("socks-in", "192.0.2.1", socks4a=True), Request("socks-in", "[2001:db8:1::5]", socks4a=True),
    Request("socks-in", "full.example", socks4a=True),
]
UDP_CASES = [
    socks("8.8.8.8", 53, udp=True, payload=b"q"), socks("192.0.2.1", 53, udp=True, payload=b"q"),
    socks("9.9.9.9", 1500, udp=True, payload=b"q"), socks("full.example", 53, udp=True, payload=b"q"),
    socks("8.8.8.8", 4444, udp=True, payload=b"q"),
]

# What v2ray answered, for the coverage check at the end of the module.
SEEN: List[str] = []


@pytest.fixture(scope="module")
def pair(v2ray_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutedPair]:
    assets = asset_dir(tmp_path_factory.mktemp("geo"))
    with RoutedPair(INBOUNDS, OUTBOUNDS, ROUTING, assets=assets, udp_tags=UDP_OUTBOUNDS,
                    v2ray_bin=v2ray_bin) as running:
        yield running


def check(pair: RoutedPair, request: Request) -> None:
    answers = pair.route(request)
    SEEN.append(answers[0])
    assert answers[0] == answers[1], describe(request, answers, pair)


@pytest.mark.parametrize("request_", DOMAIN_CASES, ids=lambda r: f"{r.host}:{r.port}")
def test_domain_rules_route_as_v2ray_does(pair: RoutedPair, request_: Request) -> None:
    check(pair, request_)


@pytest.mark.parametrize("request_", IP_CASES, ids=lambda r: f"{r.host}:{r.port}")
def test_ip_and_port_rules_route_as_v2ray_does(pair: RoutedPair, request_: Request) -> None:
    check(pair, request_)


@pytest.mark.parametrize("request_", OTHER_CASES, ids=lambda r: f"{r.inbound}-{r.host}:{r.port}")
def test_source_user_inbound_and_protocol_rules_route_as_v2ray_does(pair: RoutedPair,
                                                                    request_: Request) -> None:
    check(pair, request_)


@pytest.mark.parametrize("request_", UDP_CASES, ids=lambda r: f"udp-{r.host}:{r.port}")
def test_udp_routes_as_v2ray_does(pair: RoutedPair, request_: Request) -> None:
    check(pair, request_)


def test_source_port_rule_routes_as_v2ray_does(pair: RoutedPair) -> None:
    for _ in range(2):  # a port inside the range, and (after the rule) one outside it
        inside = Request("socks-in", "8.8.8.8", source=("127.0.0.1", free_source_port(*SOURCE_PORTS)))
        check(pair, inside)
    check(pair, Request("socks-in", "8.8.8.8", source=("127.0.0.1", SOURCE_PORTS[1] + 1)))


def test_source_and_source_port_together_route_as_v2ray_does(pair: RoutedPair) -> None:
    for source in (("127.0.0.5", free_source_port(*AND_PORTS, host="127.0.0.5")), ("127.0.0.5", 0),
                   ("127.0.0.1", free_source_port(*AND_PORTS))):
        check(pair, Request("socks-in", "8.8.8.8", source=source))


def test_balancer_uses_the_same_outbounds_as_v2ray(pair: RoutedPair) -> None:
    request = Request("socks-bal", "8.8.8.8")
    chosen = {name: sorted({pair.route_via(name, request) for _ in range(BALANCED_REQUESTS)})
              for name in ("v2ray", "v2sync")}
    SEEN.extend(chosen["v2ray"])
    assert chosen["v2ray"] == chosen["v2sync"], f"{chosen}\n{pair.logs()}"


def test_the_cases_reach_every_outbound(pair: RoutedPair) -> None:
    """Runs last: the requests above made v2ray use every outbound, so no comparison above
    was two proxies failing the same way."""
    missing = sorted(set(OUTBOUNDS + [BLOCK]) - set(SEEN))
    assert not missing, f"no request reached {missing} in v2ray; seen: {sorted(set(SEEN))}"
