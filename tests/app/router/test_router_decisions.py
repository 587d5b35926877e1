"""Router decisions: every field, first match, balancers, domain strategies, and a property
that the indexed router agrees with a naive rule-by-rule reference."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings, strategies as st

from v2sync.app.router import RouteDecision, Router, RoutingConfig, RoutingContext, from_json
from v2sync.app.router.config import DomainStrategy, RoutingRule
from v2sync.app.router.geodata import GeoData
from v2sync.app.router.matchers import DomainKind, DomainPattern, IntRangeSet, IpSet, parse_cidr
from v2sync.common.net import Address, Destination
from v2sync.common.session import Session

from app.router.router_reference import reference_match

CLIENT = Destination.tcp("192.168.1.10", 40000)
OUTBOUNDS = ["direct", "proxy", "block", "px-a", "px-b", "py-c"]


def make_router(rules: List[Dict[str, Any]], tmp_path: Path, strategy: str = "AsIs",
                resolve: Any = None, **kwargs: Any) -> Router:
    raw = {"domainStrategy": strategy, "rules": rules,
           "balancers": [{"tag": "pool", "selector": ["px-"]}, {"tag": "empty", "selector": ["zz"]}]}
    config = from_json(raw, geodata=GeoData([str(tmp_path)]))
    return Router(config, resolve, outbound_tags=OUTBOUNDS, **kwargs)


def ctx(host: str, port: int = 443, *, udp: bool = False, inbound: str = "in", user: str = "",
        protocol: str = "", source: Optional[Destination] = CLIENT) -> RoutingContext:
    target = Destination.udp(host, port) if udp else Destination.tcp(host, port)
    return RoutingContext(inbound, source, target, user, protocol)


def rule(tag: str, **fields: Any) -> Dict[str, Any]:
    return {"type": "field", "outboundTag": tag, **fields}


class FakeResolver:
    def __init__(self, answers: Dict[str, List[str]], error: Optional[Exception] = None):
        self.answers, self.error = answers, error
        self.calls: List[str] = []

    def __call__(self, name: str) -> List[Address]:
        self.calls.append(name)
        if self.error is not None:
            raise self.error
        return [Address.parse(a) for a in self.answers.get(name, [])]


# --------------------------------------------------------------------------- fields

def test_domain_prefixes_route(tmp_path: Path) -> None:
    router = make_router([rule("block", domain=["domain:ads.example", "full:t.example", "keyword:track",
                                                "regexp:^cdn[0-9]+\\.", "plainword", "dotless:"])], tmp_path)
    for host in ("ads.example", "x.ads.example", "t.example", "mytracker.net", "cdn7.example",
                 "a-plainword-b.net", "localhost"):
        assert router.pick_route(ctx(host)) == "block", host
    for host in ("badads.example", "u.t.example", "cdn.example", "Ads.example", "plain.net"):
        assert router.pick_route(ctx(host)) is None, host


def test_ip_rules_match_ip_targets(tmp_path: Path) -> None:
    router = make_router([rule("direct", ip=["geoip:private", "8.8.8.8", "2001:db8::/32"])], tmp_path)
    for host in ("10.2.3.4", "127.0.0.1", "8.8.8.8", "2001:db8::5", "fd00::1", "::ffff:10.0.0.1"):
        assert router.pick_route(ctx(host)) == "direct", host
    for host in ("8.8.4.4", "2001:db9::1", "example.com"):
        assert router.pick_route(ctx(host)) is None, host


@pytest.mark.parametrize("fields, hit, miss", [
    ({"port": "53,1000-2000"}, ctx("a", 1500), ctx("a", 443)),
    ({"sourcePort": "40000"}, ctx("a"), ctx("a", source=Destination.tcp("192.168.1.10", 40001))),
    ({"network": "udp"}, ctx("a", udp=True), ctx("a")),
    ({"source": ["192.168.0.0/16"]}, ctx("a"), ctx("a", source=Destination.tcp("10.0.0.1", 1))),
    ({"source": ["geoip:private"]}, ctx("a"), ctx("a", source=None)),
    ({"user": ["u@example.com"]}, ctx("a", user="u@example.com"), ctx("a", user="v@example.com")),
    ({"user": ["u@example.com"]}, ctx("a", user="u@example.com"), ctx("a")),
    ({"inboundTag": ["in"]}, ctx("a"), ctx("a", inbound="other")),
    ({"protocol": ["http"]}, ctx("a", protocol="http1"), ctx("a", protocol="tls")),
    ({"protocol": ["http"]}, ctx("a", protocol="http/1.1"), ctx("a")),
    ({"protocol": ["bittorrent", "tls"]}, ctx("a", protocol="tls"), ctx("a", protocol="http1")),
])
def test_each_field_matches_and_misses(tmp_path: Path, fields: Dict[str, Any], hit: RoutingContext,
                                       miss: RoutingContext) -> None:
    router = make_router([rule("proxy", **fields)], tmp_path)
    assert router.pick_route(hit) == "proxy"
    assert router.pick_route(miss) is None


def test_conditions_are_anded_and_values_ored(tmp_path: Path) -> None:
    router = make_router([rule("proxy", domain=["domain:a.example", "domain:b.example"], port="443",
                               network="tcp")], tmp_path)
    assert router.pick_route(ctx("x.b.example")) == "proxy"
    assert router.pick_route(ctx("x.b.example", 80)) is None
    assert router.pick_route(ctx("x.b.example", udp=True)) is None


def test_first_matching_rule_wins(tmp_path: Path) -> None:
    router = make_router([rule("proxy", port="443"), rule("block", domain=["full:ads.example"]),
                          rule("direct", domain=["domain:example"])], tmp_path)
    decision = router.decide(ctx("ads.example"))
    assert decision == RouteDecision("proxy", None, 0)
    assert router.decide(ctx("ads.example", 80)) == RouteDecision("block", None, 1)
    assert router.decide(ctx("www.example", 80)) == RouteDecision("direct", None, 2)
    assert router.decide(ctx("other.test", 80)) == RouteDecision(None, None, None)


def test_sessions_are_routed_through_their_context(tmp_path: Path) -> None:
    router = make_router([rule("proxy", user=["u@x"], inboundTag=["vin"], protocol=["tls"])], tmp_path)
    session = Session("vin", CLIENT, Destination.tcp("example.com", 443), user_email="u@x", protocol="tls")
    assert RoutingContext.from_session(session) == RoutingContext("vin", CLIENT, session.target, "u@x", "tls")
    assert router.pick_route(session) == "proxy"
    assert router.pick_route(Session("vin", CLIENT, None, user_email="u@x", protocol="tls")) == "proxy"


# --------------------------------------------------------------------------- balancers

class PickLast:
    def __init__(self) -> None:
        self.offered: List[Sequence[str]] = []

    def choice(self, tags: Sequence[str]) -> str:
        self.offered.append(tags)
        return tags[-1]


def test_balancer_picks_among_outbounds_with_a_selector_prefix(tmp_path: Path) -> None:
    rng = PickLast()
    router = make_router([{"type": "field", "balancerTag": "pool", "port": "443"}], tmp_path, rng=rng)
    assert router.pick_route(ctx("a")) == "px-b"
    assert rng.offered == [("px-a", "px-b")]


def test_balancer_choice_is_random_over_its_outbounds(tmp_path: Path) -> None:
    router = make_router([{"type": "field", "balancerTag": "pool", "port": "443"}], tmp_path)
    assert {router.pick_route(ctx("a")) for _ in range(200)} == {"px-a", "px-b"}


def test_balancer_without_outbounds_falls_back_to_default_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="v2sync.app.router.router"):
        router = make_router([{"type": "field", "balancerTag": "empty", "port": "443"}], tmp_path)
        decision = router.decide(ctx("a"))
    assert decision == RouteDecision(None, None, 0)
    assert any("selects no outbound" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- domain strategies

IP_RULES = [rule("block", domain=["full:ads.example"]), rule("direct", ip=["10.0.0.0/8"]),
            rule("proxy", ip=["2001:db8::/32"])]


@pytest.mark.parametrize("strategy", ["AsIs", "AlwaysIP"])
def test_as_is_never_resolves(tmp_path: Path, strategy: str) -> None:
    resolver = FakeResolver({"host.example": ["10.1.1.1"]})
    router = make_router(IP_RULES, tmp_path, strategy, resolver)
    assert router.decide(ctx("host.example")) == RouteDecision(None, None, None)
    assert router.pick_route(ctx("10.1.1.1")) == "direct"
    assert resolver.calls == []


def test_ip_if_non_match_resolves_once_only_when_nothing_matched(tmp_path: Path) -> None:
    resolver = FakeResolver({"host.example": ["192.0.2.1", "2001:db8::1", "10.9.9.9"], "none.example": []})
    router = make_router(IP_RULES, tmp_path, "IPIfNonMatch", resolver)
    assert router.decide(ctx("ads.example")) == RouteDecision("block", None, 0)
    assert resolver.calls == []
    decision = router.decide(ctx("host.example"))
    assert decision.tag == "direct" and decision.rule == 1  # rule order decides, not address order
    assert decision.resolved == tuple(Address.parse(a) for a in ("192.0.2.1", "2001:db8::1", "10.9.9.9"))
    assert router.decide(ctx("none.example")) == RouteDecision(None, (), None)
    assert resolver.calls == ["host.example", "none.example"]
    assert router.decide(ctx("10.0.0.1")) == RouteDecision("direct", None, 1)  # an IP is never looked up


def test_ip_if_non_match_keeps_domain_conditions_on_the_second_pass(tmp_path: Path) -> None:
    resolver = FakeResolver({"a.example": ["10.0.0.1"], "b.example": ["10.0.0.1"]})
    router = make_router([rule("proxy", domain=["domain:a.example"], ip=["10.0.0.0/8"])], tmp_path,
                         "IPIfNonMatch", resolver)
    assert router.pick_route(ctx("a.example")) == "proxy"
    assert router.pick_route(ctx("b.example")) is None
    assert resolver.calls == ["a.example"]  # b.example fails the domain check: no ip check, no lookup


def test_ip_on_demand_resolves_at_the_first_ip_rule_reached(tmp_path: Path) -> None:
    resolver = FakeResolver({"host.example": ["2001:db8::7"]})
    router = make_router(IP_RULES, tmp_path, "IPOnDemand", resolver)
    assert router.decide(ctx("ads.example")) == RouteDecision("block", None, 0)
    assert resolver.calls == []  # a rule before any ip rule matched
    decision = router.decide(ctx("host.example"))
    assert decision == RouteDecision("proxy", (Address.parse("2001:db8::7"),), 2)
    assert resolver.calls == ["host.example"]  # two ip rules, one lookup


def test_ip_on_demand_skips_ip_rules_whose_earlier_checks_fail(tmp_path: Path) -> None:
    resolver = FakeResolver({"host.example": ["10.0.0.1"]})
    rules = [rule("direct", port="80", ip=["10.0.0.0/8"]), rule("proxy", domain=["domain:example"])]
    router = make_router(rules, tmp_path, "IPOnDemand", resolver)
    assert router.decide(ctx("host.example", 443)) == RouteDecision("proxy", None, 1)
    assert resolver.calls == []  # the port check comes before the ip check (BuildCondition order)


def test_ip_on_demand_resolves_before_checking_protocol_and_source(tmp_path: Path) -> None:
    resolver = FakeResolver({"host.example": ["10.0.0.1"]})
    rules = [rule("direct", ip=["10.0.0.0/8"], protocol=["tls"]), rule("proxy", port="443")]
    router = make_router(rules, tmp_path, "IPOnDemand", resolver)
    assert router.decide(ctx("host.example")) == RouteDecision("proxy", (Address.parse("10.0.0.1"),), 1)
    assert resolver.calls == ["host.example"]


def test_a_failed_lookup_is_not_retried_and_matches_no_ip_rule(tmp_path: Path) -> None:
    resolver = FakeResolver({}, error=OSError("no network"))
    router = make_router(IP_RULES + [rule("proxy", ip=["0.0.0.0/0"])], tmp_path, "IPOnDemand", resolver)
    assert router.decide(ctx("host.example")) == RouteDecision(None, (), None)
    assert resolver.calls == ["host.example"]


def test_without_a_resolver_domains_stay_unresolved(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="v2sync.app.router.router"):
        router = make_router(IP_RULES, tmp_path, "IPOnDemand")
    assert router.decide(ctx("host.example")) == RouteDecision(None, None, None)
    assert any("without a resolver" in r.getMessage() for r in caplog.records)


def test_domain_answers_from_the_resolver_are_ignored(tmp_path: Path) -> None:
    resolver = FakeResolver({"host.example": ["alias.example", "10.0.0.2"]})
    router = make_router(IP_RULES, tmp_path, "IPIfNonMatch", resolver)
    assert router.decide(ctx("host.example")) == RouteDecision("direct", (Address.parse("10.0.0.2"),), 1)


# --------------------------------------------------------------------------- reference property

class ReferenceRouter:
    """4.34's router.go walked literally: every rule, conditions in BuildCondition order."""

    def __init__(self, config: RoutingConfig, resolve: FakeResolver):
        self.config, self.resolve = config, resolve

    def decide(self, c: RoutingContext) -> Tuple[Optional[int], Optional[Tuple[Address, ...]]]:
        target = c.target
        domain = target.address.value if target is not None and target.address.is_domain else ""
        state: Dict[str, Any] = {"resolved": None}
        strategy = self.config.domain_strategy
        on_demand = strategy is DomainStrategy.IP_ON_DEMAND
        for i, r in enumerate(self.config.rules):
            if self.applies(r, c, domain, state, on_demand):
                return i, state["resolved"]
        if strategy is DomainStrategy.IP_IF_NON_MATCH and domain:
            for i, r in enumerate(self.config.rules):
                if self.applies(r, c, domain, state, True):
                    return i, state["resolved"]
        return None, state["resolved"]

    def target_ips(self, c: RoutingContext, domain: str, state: Dict[str, Any],
                   resolvable: bool) -> List[Address]:
        if c.target is not None and c.target.address.is_ip:
            return [c.target.address]
        if not domain or not resolvable:
            return []
        if state["resolved"] is None:
            state["resolved"] = tuple(a for a in self.resolve(domain) if a.is_ip)
        return list(state["resolved"])

    def applies(self, r: RoutingRule, c: RoutingContext, domain: str, state: Dict[str, Any],
                resolvable: bool) -> bool:
        t, s = c.target, c.source
        checks = [
            lambda: not r.domains or (bool(domain) and any(reference_match(p, domain) for p in r.domains)),
            lambda: r.users is None or (bool(c.user_email) and c.user_email in r.users),
            lambda: r.inbound_tags is None or (bool(c.inbound_tag) and c.inbound_tag in r.inbound_tags),
            lambda: r.ports is None or (t.port if t else 0) in r.ports,
            lambda: r.source_ports is None or (s.port if s else 0) in r.source_ports,
            lambda: r.networks is None or (t.network.value if t else "") in r.networks,
            lambda: r.ip is None or any(r.ip.contains(a)
                                        for a in self.target_ips(c, domain, state, resolvable)),
            lambda: r.source is None or (s is not None and r.source.contains(s.address)),
            lambda: r.protocols is None or (bool(c.protocol)
                                            and any(c.protocol.startswith(p) for p in r.protocols)),
        ]
        return all(check() for check in checks)


NAMES = ["a.example", "b.a.example", "example", "ab.test", "x"]
IPS = ["10.0.0.1", "10.1.2.3", "192.0.2.9", "2001:db8::1", "::1"]
PATTERNS = [DomainPattern(DomainKind.DOMAIN, "a.example"), DomainPattern(DomainKind.FULL, "example"),
            DomainPattern(DomainKind.PLAIN, "ab"), DomainPattern(DomainKind.REGEX, "^b\\."),
            DomainPattern(DomainKind.DOMAIN, "example"), DomainPattern(DomainKind.PLAIN, "x")]
CIDRS = ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24", "2001:db8::/32", "::1/128", "0.0.0.0/0"]


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


@st.composite
def rules(draw: st.DrawFn, index: int) -> RoutingRule:
    ipset = lambda: st.lists(st.sampled_from(CIDRS), min_size=1, max_size=2).map(  # noqa: E731
        lambda cs: IpSet.from_cidrs(parse_cidr(c) for c in cs))
    return RoutingRule(
        path=f"r{index}", outbound_tag=f"t{index}",
        domains=tuple(draw(st.lists(st.sampled_from(PATTERNS), max_size=2))),
        ip=draw(optional(ipset())), source=draw(optional(ipset())),
        ports=draw(optional(st.sampled_from([IntRangeSet.from_ranges([(443, 443)]),
                                             IntRangeSet.from_ranges([(1, 100)])]))),
        source_ports=draw(optional(st.just(IntRangeSet.from_ranges([(40000, 40000)])))),
        networks=draw(optional(st.sampled_from([frozenset({"tcp"}), frozenset({"udp"})]))),
        users=draw(optional(st.sampled_from([frozenset({"u"}), frozenset()]))),
        inbound_tags=draw(optional(st.just(frozenset({"in"})))),
        protocols=draw(optional(st.sampled_from([("http",), ("tls", "bit")]))),
    )


@st.composite
def configs(draw: st.DrawFn) -> RoutingConfig:
    count = draw(st.integers(0, 7))
    return RoutingConfig(draw(st.sampled_from(list(DomainStrategy))),
                         tuple(draw(rules(i)) for i in range(count)))


contexts = st.builds(
    lambda host, port, udp, inbound, user, protocol, source: RoutingContext(
        inbound, source, Destination.udp(host, port) if udp else Destination.tcp(host, port), user, protocol),
    st.sampled_from(NAMES + IPS), st.sampled_from([443, 80, 53]), st.booleans(),
    st.sampled_from(["in", "other", ""]), st.sampled_from(["u", ""]),
    st.sampled_from(["http1", "tls", "bittorrent", ""]),
    st.none() | st.sampled_from([Destination.tcp(ip, 40000) for ip in IPS] + [Destination.tcp("10.0.0.1", 1)]))


@settings(max_examples=400, deadline=None)
@given(configs(), st.lists(contexts, min_size=1, max_size=6),
       st.dictionaries(st.sampled_from(NAMES), st.lists(st.sampled_from(IPS), max_size=3)))
def test_router_agrees_with_the_reference(config: RoutingConfig, cases: List[RoutingContext],
                                          answers: Dict[str, List[str]]) -> None:
    ours, theirs = FakeResolver(answers), FakeResolver(answers)
    router = Router(config, ours)
    reference = ReferenceRouter(config, theirs)
    for case in cases:
        before = len(ours.calls)
        decision = router.decide(case)
        index, resolved = reference.decide(case)
        assert (decision.rule, decision.resolved) == (index, resolved), case
        assert decision.tag == (None if index is None else f"t{index}")
        assert len(ours.calls) - before <= 1
    assert ours.calls == theirs.calls
