"""The routing section: JSON -> RoutingConfig, and every error located by its JSON path."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest

from v2sync.app.router.config import DomainStrategy, RoutingConfig, from_json
from v2sync.app.router.geodata import GeoData, SiteDomain, encode_geoip_list, encode_geosite_list
from v2sync.app.router.matchers import DomainKind, DomainPattern
from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.common.net import Address

from support.deep import deep_json


@pytest.fixture
def geodata(tmp_path: Path) -> GeoData:
    (tmp_path / "geosite.dat").write_bytes(encode_geosite_list([
        ("cn", [SiteDomain(DomainKind.DOMAIN, "cn.example", ("cn",)),
                SiteDomain(DomainKind.FULL, "ads.example", ("ads", "cn")),
                SiteDomain(DomainKind.REGEX, "^x$")]),
        ("bad-regex", [SiteDomain(DomainKind.REGEX, "(")]),
    ]))
    (tmp_path / "geoip.dat").write_bytes(encode_geoip_list([("CN", ["1.0.1.0/24"])]))
    (tmp_path / "mine.dat").write_bytes(encode_geoip_list([("lan", ["192.168.0.0/16"])]))
    return GeoData([str(tmp_path)])


def rule(**fields: Any) -> Dict[str, Any]:
    return {"type": "field", "outboundTag": "out", **fields}


def one_rule(geodata: GeoData, **fields: Any) -> Any:
    return from_json({"rules": [rule(**fields)]}, geodata=geodata).rules[0]


def error_of(raw: Dict[str, Any], geodata: GeoData) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        from_json(raw, geodata=geodata)
    return caught.value


def test_an_absent_or_empty_section_routes_nothing(geodata: GeoData) -> None:
    assert from_json(None) == RoutingConfig()
    assert from_json({}, geodata=geodata) == RoutingConfig(DomainStrategy.AS_IS, (), ())


def test_domain_prefixes(geodata: GeoData) -> None:
    r = one_rule(geodata, domain=["plain", "keyword:kw", "domain:d.example", "full:f.example",
                                  "regexp:^r", "dotless:", "dotless:intra", "ext-ip:x"])
    assert r.domains == (
        DomainPattern(DomainKind.PLAIN, "plain"), DomainPattern(DomainKind.PLAIN, "kw"),
        DomainPattern(DomainKind.DOMAIN, "d.example"), DomainPattern(DomainKind.FULL, "f.example"),
        DomainPattern(DomainKind.REGEX, "^r"), DomainPattern(DomainKind.REGEX, "^[^.]*$"),
        DomainPattern(DomainKind.REGEX, "^[^.]*intra[^.]*$"),
        DomainPattern(DomainKind.PLAIN, "ext-ip:x"),  # not a domain prefix: a plain string
    )


def test_domain_and_domains_are_joined_and_a_string_is_split_on_commas(geodata: GeoData) -> None:
    r = one_rule(geodata, domain="a,full:b", domains=["c"])
    assert [str(p) for p in r.domains] == ["keyword:a", "full:b", "keyword:c"]


def test_geosite_lists_and_attribute_filters(geodata: GeoData) -> None:
    everything = one_rule(geodata, domain=["geosite:CN"])
    assert [str(p) for p in everything.domains] == ["domain:cn.example", "full:ads.example", "regexp:^x$"]
    ads = one_rule(geodata, domain=["geosite:cn@ADS"])
    assert [str(p) for p in ads.domains] == ["full:ads.example"]
    both = one_rule(geodata, domain=["geosite:cn@cn@ ads ", "ext:geosite.dat:cn@cn",
                                     "ext-domain:geosite.dat:cn@"])
    assert [str(p) for p in both.domains] == [
        "full:ads.example", "domain:cn.example", "full:ads.example",
        "domain:cn.example", "full:ads.example", "regexp:^x$"]


def test_ip_entries(geodata: GeoData) -> None:
    r = one_rule(geodata, ip=["geoip:cn", "ext:mine.dat:LAN", "ext-ip:mine.dat:lan", "8.8.8.8",
                              "2001:db8::/32"], source=["geoip:private"])
    assert r.ip.contains(Address.parse("1.0.1.9")) and r.ip.contains(Address.parse("192.168.3.4"))
    assert r.ip.contains(Address.parse("8.8.8.8")) and not r.ip.contains(Address.parse("8.8.8.9"))
    assert r.ip.contains(Address.parse("2001:db8::1"))
    assert r.source.contains(Address.parse("100.64.0.1")) and r.source.contains(Address.parse("fe80::1"))


def test_ports_networks_and_name_lists(geodata: GeoData) -> None:
    r = one_rule(geodata, port=" 53, 443 ,1000-2000,", sourcePort=8080, network="tcp,UDP",
                 user="a@x,b@x", inboundTag=["in", ""], protocol=["http", ""])
    assert r.ports.ranges() == [(53, 53), (443, 443), (1000, 2000)]
    assert r.source_ports.ranges() == [(8080, 8080)]
    assert r.networks == frozenset({"tcp", "udp"})
    assert r.users == frozenset({"a@x", "b@x"})
    assert r.inbound_tags == frozenset({"in"})  # empty entries are dropped (NewInboundTagMatcher)
    assert r.protocols == ("http",)


def test_keys_match_case_insensitively_and_null_is_absent(geodata: GeoData) -> None:
    config = from_json({"Rules": [{"TYPE": "Field", "OutboundTag": "o", "Domain": ["a"], "ip": None}],
                        "DOMAINSTRATEGY": "ipondemand"}, geodata=geodata)
    assert config.domain_strategy is DomainStrategy.IP_ON_DEMAND
    assert config.rules[0].outbound_tag == "o" and config.rules[0].ip is None


@pytest.mark.parametrize("name, strategy", [
    ("AsIs", DomainStrategy.AS_IS), ("", DomainStrategy.AS_IS),
    ("IPIfNonMatch", DomainStrategy.IP_IF_NON_MATCH),
    ("ip_if_non_match", DomainStrategy.IP_IF_NON_MATCH), ("IP-On-Demand", DomainStrategy.IP_ON_DEMAND),
    ("AlwaysIP", DomainStrategy.USE_IP),
])
def test_domain_strategy_spellings(name: str, strategy: DomainStrategy) -> None:
    assert from_json({"domainStrategy": name}).domain_strategy is strategy


def test_legacy_settings_rules_follow_the_top_level_ones(geodata: GeoData) -> None:
    raw = {"rules": [rule(port=1)], "settings": {"domainStrategy": "IPIfNonMatch", "rules": [rule(port=2)]}}
    config = from_json(raw, geodata=geodata)
    assert [r.path for r in config.rules] == ["routing.rules[0]", "routing.settings.rules[0]"]
    assert config.domain_strategy is DomainStrategy.IP_IF_NON_MATCH
    top_wins = from_json({"domainStrategy": "AsIs", "settings": {"domainStrategy": "IPOnDemand"}})
    assert top_wins.domain_strategy is DomainStrategy.AS_IS


def test_balancers(geodata: GeoData) -> None:
    config = from_json({"balancers": [{"tag": "b", "selector": "px-,py-"}],
                        "rules": [{"type": "field", "balancerTag": "b", "port": 1}]}, geodata=geodata)
    assert config.balancers[0].selectors == ("px-", "py-")
    assert config.rules[0].balancer_tag == "b" and config.rules[0].outbound_tag == ""


@pytest.mark.parametrize("raw, path, words", [
    ({"domainStrategy": "Sometimes"}, "routing.domainStrategy", "unknown domainStrategy"),
    ({"settings": {"domainStrategy": 3}}, "routing.settings.domainStrategy", "unknown domainStrategy"),
    ({"rules": [{"outboundTag": "o", "port": 1}]}, "routing.rules[0].type", "unknown router rule type"),
    ({"rules": [{"type": "chinaip", "outboundTag": "o", "port": 1}]}, "routing.rules[0].type",
     "unknown router"),
    ({"rules": [rule(attrs="attrs[':method'] == 'GET'")]}, "routing.rules[0].attrs",
     "routing rule 'attrs' is not supported by v2sync"),
    ({"rules": [rule()]}, "routing.rules[0]", "no effective fields"),
    ({"rules": [{"type": "field", "port": 1}]}, "routing.rules[0]", "neither outboundTag nor balancerTag"),
    ({"rules": [rule(balancerTag="b", port=1)], "balancers": [{"tag": "b", "selector": ["x"]}]},
     "routing.rules[0]", "not both"),
    ({"rules": [{"type": "field", "balancerTag": "nope", "port": 1}]}, "routing.rules[0].balancerTag",
     "'nope' not found"),
    ({"rules": [rule(port="5-3")]}, "routing.rules[0].port", "first > last"),
    ({"rules": [rule(port="70000")]}, "routing.rules[0].port", "invalid port range"),
    ({"rules": [rule(port="")]}, "routing.rules[0].port", "empty port list"),
    ({"rules": [rule(port=0)]}, "routing.rules[0].port", "empty port list"),
    ({"rules": [rule(port=True)]}, "routing.rules[0].port", "invalid port"),
    ({"rules": [rule(sourcePort="1e2")]}, "routing.rules[0].sourcePort", "invalid port range"),
    ({"rules": [rule(network="tcp, udp")]}, "routing.rules[0].network", "unknown network ' udp'"),
    ({"rules": [rule(network=["tcp", "quic"])]}, "routing.rules[0].network[1]", "unknown network"),
    ({"rules": [rule(domain=["domain:"])]}, "routing.rules[0].domain[0]", "empty value"),
    ({"rules": [rule(domain=["a", "regexp:("])]}, "routing.rules[0].domain[1]", "invalid regexp"),
    ({"rules": [rule(domain=["dotless:a.b"])]}, "routing.rules[0].domain[0]", "should not contain a dot"),
    ({"rules": [rule(domain=["geosite:"])]}, "routing.rules[0].domain[0]", "empty list name"),
    ({"rules": [rule(domain=["geosite:cn@nosuchattr"])]}, "routing.rules[0].domain[0]", "selects no domains"),
    ({"rules": [rule(domain=["geosite:bad-regex"])]}, "routing.rules[0].domain[0]", "invalid regexp"),
    ({"rules": [rule(domain=["ext:geosite.dat"])]}, "routing.rules[0].domain[0]", "invalid external resource"),
    ({"rules": [rule(ip=["geoip:"])]}, "routing.rules[0].ip[0]", "empty country"),
    ({"rules": [rule(ip=["ext:mine.dat:"])]}, "routing.rules[0].ip[0]", "invalid external resource"),
    ({"rules": [rule(source=["geoip:zz"])]}, "routing.rules[0].source[0]", "country 'zz' not found"),
    ({"rules": [rule(user=[1])]}, "routing.rules[0].user[0]", "is not a string"),
    ({"rules": [rule(inboundTag={"a": 1})]}, "routing.rules[0].inboundTag", "not a string list"),
    ({"rules": "x"}, "routing.rules", "not an array"),
    ({"rules": ["x"]}, "routing.rules[0]", "not an object"),
    ({"balancers": [{"tag": "", "selector": ["a"]}]}, "routing.balancers[0].tag", "empty balancer tag"),
    ({"balancers": [{"tag": "b", "selector": []}]}, "routing.balancers[0].selector", "empty selector"),
    ({"balancers": [{"tag": "b", "selector": "a"}, {"tag": "b", "selector": "c"}]}, "routing.balancers[1].tag",
     "duplicate balancer tag"),
])
def test_config_errors_name_the_json_path(geodata: GeoData, raw: Dict[str, Any], path: str, words: str) -> None:
    error = error_of(raw, geodata)
    assert error.path == path
    assert words in error.message


DEEP = deep_json()  # repr() of this raises RecursionError


@pytest.mark.parametrize("raw, path, words", [
    ({"domainStrategy": DEEP}, "routing.domainStrategy", "unknown domainStrategy [...]"),
    ({"rules": [{"type": DEEP, "outboundTag": "o", "port": 1}]}, "routing.rules[0].type",
     "unknown router rule type [...]"),
    ({"rules": [rule(outboundTag=DEEP, port=1)]}, "routing.rules[0].outboundTag",
     "[...] is not a string"),
    ({"rules": [rule(inboundTag=[DEEP])]}, "routing.rules[0].inboundTag[0]", "[...] is not a string"),
    ({"rules": [rule(port=DEEP)]}, "routing.rules[0].port", "invalid port: [...]"),
    ({"rules": [rule(network=[{"a": DEEP}])]}, "routing.rules[0].network[0]", "{...} is not a string"),
])
def test_deeply_nested_values_are_named_not_repr_d(geodata: GeoData, raw: Dict[str, Any], path: str,
                                                    words: str) -> None:
    # Found by the config fuzz test at 10,000 inputs: "internal error: RecursionError".
    error = error_of(raw, geodata)
    assert error.path == path
    assert words in error.message


def test_a_missing_geosite_file_names_the_directories(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    error = error_of({"rules": [rule(domain=["geosite:cn"])]}, GeoData([str(empty)]))
    assert error.path == "routing.rules[0].domain[0]"
    assert "geosite.dat" in error.message and str(empty) in error.message


def test_geoip_private_works_without_any_file(tmp_path: Path) -> None:
    r = one_rule(GeoData([str(tmp_path)]), ip=["geoip:private"])
    assert r.ip.contains(Address.parse("192.168.1.1")) and r.ip.contains(Address.parse("::1"))
    assert not r.ip.contains(Address.parse("8.8.8.8"))


def test_every_error_is_reported_in_one_pass(geodata: GeoData) -> None:
    error = error_of({"rules": [rule(port="x", network="bogus"), rule(domain=["regexp:("])],
                      "balancers": [{"tag": ""}]}, geodata)
    assert isinstance(error, ConfigErrors)
    paths: List[str] = sorted(e.path for e in error.errors)
    assert paths == ["routing.balancers[0].tag", "routing.rules[0].network",
                     "routing.rules[0].port", "routing.rules[1].domain[0]"]


def test_an_empty_attrs_string_is_ignored(geodata: GeoData) -> None:
    assert one_rule(geodata, attrs="", port=1).ports.ranges() == [(1, 1)]


def test_empty_lists_add_no_condition_but_empty_names_never_match(geodata: GeoData) -> None:
    r = one_rule(geodata, ip=[], domain=[], user=[""], port=1)
    assert r.ip is None and r.domains == ()
    assert r.users == frozenset()
