"""domainStrategy (AsIs, IPIfNonMatch, IPOnDemand), decided by v2ray 4.34 and v2sync alike.

Names are resolved by one dnsmasq (tests/support/dnsmasq.py) that both proxies use as their
only DNS server, so the answers they route on are the same and come from a resolver neither
of them wrote. One v2ray and one v2sync run per strategy; each request goes through both
and the outbound that answered is compared (scenarios/differential.py).
"""
from __future__ import annotations

from typing import Dict, Iterator, List

import pytest

from scenarios.differential import RoutedPair, Request, asset_dir, describe
from support.dnsmasq import Dnsmasq, require_dnsmasq

STRATEGIES = ("AsIs", "IPIfNonMatch", "IPOnDemand")
RECORDS = {
    "named.example": ["192.0.2.1"],
    "both.example": ["192.0.2.1"],
    "cn.example": ["203.0.113.5"],
    "six.example": ["2001:db8:1::5"],
    "multi.example": ["8.8.8.8", "192.0.2.1"],
    "private.example": ["10.1.2.3"],
    "plain.example": ["8.8.4.4"],
}
CNAMES = {"alias.example": "cn.example"}
INBOUNDS = [{"tag": "socks-in", "protocol": "socks", "settings": {"auth": "noauth"}}]
OUTBOUNDS = ["direct", "domain", "ip", "geoip", "ip6", "private"]
DNS_OUT = "dns-out"


def rule(tag: str, **fields: object) -> Dict[str, object]:
    return {"type": "field", "outboundTag": tag, **fields}


RULES = [
    rule("domain", domain=["full:named.example"]),
    rule("ip", ip=["192.0.2.1"]),
    rule("domain", domain=["domain:both.example"]),
    rule("geoip", ip=["geoip:cn"]),
    rule("ip6", ip=["2001:db8:1::/48"]),
    rule("private", ip=["geoip:private"]),
]
NAMES = ["named.example", "both.example", "cn.example", "alias.example", "six.example",
         "multi.example", "private.example", "plain.example", "nx.example", "sub.both.example"]
ADDRESSES = ["192.0.2.1", "203.0.113.5", "2001:db8:1::5", "10.1.2.3", "8.8.8.8"]

SEEN: Dict[str, List[str]] = {}


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[Dnsmasq]:
    with Dnsmasq(require_dnsmasq(), RECORDS, cnames=CNAMES) as server:
        yield server


@pytest.fixture(scope="module", params=STRATEGIES)
def pair(request: pytest.FixtureRequest, v2ray_bin: str, dnsmasq: Dnsmasq,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutedPair]:
    # Both send their DNS queries through the router (app/dns/nameserver_udp.go dispatches
    # them; v2sync's app/dns/routed.py), where 127.0.0.1 would match geoip:private and land
    # in a sink: the first rule gives them a real freedom.
    to_dns = {"type": "field", "outboundTag": DNS_OUT, "network": "udp", "ip": [dnsmasq.host],
              "port": dnsmasq.port}
    routing = {"domainStrategy": request.param, "rules": [to_dns, *RULES]}
    dns = {"servers": [{"address": dnsmasq.host, "port": dnsmasq.port}]}
    with RoutedPair(INBOUNDS, OUTBOUNDS, routing, assets=asset_dir(tmp_path_factory.mktemp("geo")),
                    dns=dns, extra_outbounds=[{"tag": DNS_OUT, "protocol": "freedom"}],
                    v2ray_bin=v2ray_bin) as running:
        running.strategy = request.param  # type: ignore[attr-defined]
        yield running


@pytest.mark.parametrize("target", NAMES + ADDRESSES)
def test_strategy_routes_as_v2ray_does(pair: RoutedPair, target: str) -> None:
    request = Request("socks-in", target)
    answers = pair.route(request)
    SEEN.setdefault(pair.strategy, []).append(answers[0])  # type: ignore[attr-defined]
    assert answers[0] == answers[1], describe(request, answers, pair)


def test_the_strategies_route_differently(pair: RoutedPair) -> None:
    """Runs after each strategy's requests: v2ray routed names by IP under the IP strategies
    and not under AsIs, so the comparisons above did exercise resolution."""
    seen = set(SEEN.get(pair.strategy, []))  # type: ignore[attr-defined]
    if pair.strategy == "AsIs":  # type: ignore[attr-defined]
        assert {"domain", "ip", "direct"} <= seen, seen
    else:
        assert {"domain", "ip", "geoip", "ip6", "private", "direct"} <= seen, seen
