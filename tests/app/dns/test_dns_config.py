"""The ``dns`` section -> DnsConfig, errors located by JSON path, and agreement with the real
``v2ray -test`` on what is accepted and refused."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

import pytest

from v2sync.app.dns.config import DnsConfig, HostMapping, NameServerConfig
from v2sync.app.dns.matcher import DOMAIN, FULL, KEYWORD, REGEXP, DomainRule
from v2sync.app.router.geodata import GeoData
from v2sync.app.router.matchers import parse_cidr
from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.common.net import Address

from support.deep import deep_json

FULL_SECTION = {
    "servers": [
        "8.8.8.8",
        "2001:db8::53",
        "dns.example",
        {"address": "1.1.1.1", "port": 5353, "domains": ["domain:corp.test", "intra"],
         "expectIps": ["10.0.0.0/8", "192.168.1.1"], "clientIp": "9.9.9.9"},
        {"address": "localhost", "domains": ["full:printer"]},
    ],
    "hosts": {
        "full:a.test": "10.0.0.1",
        "domain:b.test": "a.test",
        "plain.test": "::1",
        "keyword:kw": "10.0.0.2",
        "regexp:^r\\d+\\.test$": "10.0.0.3",
        "localhost.test": "127.0.0.1",
    },
    "clientIp": "5.6.7.8",
    "tag": "dns-in",
}


def test_full_section() -> None:
    config = DnsConfig.from_json(FULL_SECTION)
    assert config.tag == "dns-in"
    assert config.client_ip == Address.parse("5.6.7.8")
    google, v6, named, corp, local_printer = config.servers
    assert google == NameServerConfig(Address.parse("8.8.8.8"), 53)
    assert v6.name == "UDP:[2001:db8::53]:53"
    assert named.address == Address.parse("dns.example") and named.address.is_domain
    assert corp == NameServerConfig(
        Address.parse("1.1.1.1"), 5353,
        (DomainRule(DOMAIN, "corp.test"), DomainRule(KEYWORD, "intra")),
        (parse_cidr("10.0.0.0/8"), parse_cidr("192.168.1.1/32")),
        Address.parse("9.9.9.9"))
    assert local_printer.is_local and local_printer.domains == (DomainRule(FULL, "printer"),)
    assert local_printer.name == "localhost"
    # Only one "localhost" server here: 4.34 panics (dns.go matcherInfos) when given two.
    assert DnsConfig.from_json({"servers": ["localhost"]}).servers == (NameServerConfig(None),)


def test_hosts_are_sorted_by_key_and_plain_keys_are_full_matches() -> None:
    hosts = DnsConfig.from_json(FULL_SECTION).hosts
    # sorted(keys): domain:b.test, full:a.test, keyword:kw, localhost.test, plain.test, regexp:
    assert [str(h.rule) for h in hosts] == [
        "domain:b.test", "full:a.test", "keyword:kw", "full:localhost.test", "full:plain.test",
        "regexp:^r\\d+\\.test$"]
    by_rule = {str(h.rule): h for h in hosts}
    assert by_rule["domain:b.test"].replacement == "a.test"
    assert by_rule["full:a.test"].replacement is None
    # hosts.go: a lone 127.0.0.1 answers ::1 as well.
    assert by_rule["full:localhost.test"] == HostMapping(
        DomainRule(FULL, "localhost.test"), (Address.parse("127.0.0.1"), Address.parse("::1")))
    assert by_rule["regexp:^r\\d+\\.test$"].rule.kind == REGEXP


def test_keys_are_case_insensitive_like_go() -> None:
    config = DnsConfig.from_json({
        "Servers": [{"Address": "1.1.1.1", "PORT": 54, "expectIPs": "10.0.0.0/8,11.0.0.0/8",
                     "ClientIP": "1.2.3.4", "Domains": ["x"]}],
        "CLIENTIP": "5.6.7.8"})
    server = config.servers[0]
    assert (server.port, server.client_ip, len(server.expect_ips)) == (
        54, Address.parse("1.2.3.4"), 2)
    assert config.client_ip == Address.parse("5.6.7.8")


def test_empty_and_absent() -> None:
    assert DnsConfig.from_json(None) == DnsConfig()
    assert DnsConfig.from_json({}) == DnsConfig()
    port_zero = DnsConfig.from_json({"servers": [{"address": "1.2.3.4", "port": 0}]})
    assert port_zero.servers[0].port == 53  # nameserver_udp.go: 0 means 53


@pytest.mark.parametrize("section, path, message", [
    ({"servers": ["https://dns.google/dns-query"]}, "dns.servers[0]",
     "DoH/DoQ servers are not supported by v2sync yet"),
    ({"servers": ["8.8.8.8", "https+local://1.1.1.1/dns-query"]}, "dns.servers[1]",
     "DoH/DoQ servers are not supported by v2sync yet"),
    ({"servers": [{"address": "quic+local://dns.adguard.com"}]}, "dns.servers[0].address",
     "DoH/DoQ servers are not supported by v2sync yet"),
    ({"servers": ["tcp://1.1.1.1"]}, "dns.servers[0]", "unknown name server URL"),
    ({"servers": ["1.2.3.4:53"]}, "dns.servers[0]", "invalid name server address"),
    ({"servers": [{"port": 53}]}, "dns.servers[0].address", "address is not specified"),
    ({"servers": [{"address": "1.1.1.1", "port": 65536}]}, "dns.servers[0].port",
     "invalid port"),
    ({"servers": [{"address": "1.1.1.1", "domains": "a,b"}]}, "dns.servers[0].domains",
     "invalid domains"),
    ({"servers": [{"address": "1.1.1.1", "domains": ["ok", "geosite:"]}]},
     "dns.servers[0].domains[1]", "empty list name"),
    ({"servers": [{"address": "1.1.1.1", "expectIps": ["geoip:"]}]},
     "dns.servers[0].expectIps[0]", "empty country name"),
    ({"servers": [{"address": "1.1.1.1", "expectIps": ["10.0.0.0/33"]}]},
     "dns.servers[0].expectIps[0]", "invalid network mask for router"),
    ({"servers": [{"address": "1.1.1.1", "expectIps": ["10.0.0.0/255.0.0.0"]}]},
     "dns.servers[0].expectIps[0]", "invalid network mask for router"),
    ({"servers": [{"address": "1.1.1.1", "clientIp": "example.com"}]},
     "dns.servers[0].clientIp", "not an IP address"),
    ({"servers": [42]}, "dns.servers[0]", "invalid name server"),
    ({"servers": "8.8.8.8"}, "dns.servers", "is not an array"),
    ({"clientIp": "example.com"}, "dns.clientIp", "not an IP address"),
    ({"hosts": {"ext:only-a-file": "1.2.3.4"}}, 'dns.hosts["ext:only-a-file"]',
     "invalid external resource"),
    ({"hosts": {"regexp:(": "1.2.3.4"}}, 'dns.hosts["regexp:("]', "invalid regexp"),
    ({"hosts": {"a.test": ["1.2.3.4"]}}, 'dns.hosts["a.test"]', "is not a string"),
    ({"hosts": {"a.test": ""}}, 'dns.hosts["a.test"]', "empty address"),
    ({"tag": 5}, "dns.tag", "is not a string"),
])
def test_errors_are_located(section: Mapping[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        DnsConfig.from_json(section)
    assert info.value.path == path
    assert message in info.value.message


@pytest.mark.parametrize("section, path, message", [
    ({"servers": [{"address": "1.1.1.1", "port": deep_json()}]}, "dns.servers[0].port",
     "invalid port [...]"),
    ({"servers": [{"address": "1.1.1.1", "domains": [deep_json()]}]}, "dns.servers[0].domains",
     "invalid domains [...]"),
    ({"servers": [deep_json()]}, "dns.servers[0]", "invalid name server [...]"),
    ({"tag": deep_json()}, "dns.tag", "[...] is not a string"),
])
def test_deeply_nested_values_are_named_not_repr_d(section: Mapping[str, Any], path: str,
                                                    message: str) -> None:
    # port and domains gave "internal error: RecursionError" through v2sync test.
    with pytest.raises(ConfigError) as info:
        DnsConfig.from_json(section)
    assert info.value.path == path
    assert message in info.value.message


VECTORS = Path(__file__).resolve().parents[2] / "vectors"


@pytest.fixture
def geodata(tmp_path: Path) -> GeoData:
    """The test vectors as geosite.dat/geoip.dat, and geosite-test.dat for ``ext:``."""
    for name in ("geosite-test.dat", "geoip-test.dat"):
        shutil.copy(VECTORS / name, tmp_path / name)
        shutil.copy(VECTORS / name, tmp_path / name.replace("-test", ""))
    return GeoData([str(tmp_path)])


def test_geosite_and_geoip_lists_expand_as_dns_go_reads_them(geodata: GeoData) -> None:
    """Each domain of a list becomes a rule (typeMap: plain -> keyword, regex, domain,
    full), hosts keys too (one mapping per domain); expectIps take geoip lists
    (``toCidrList``). ``ext-domain:`` is no list prefix for a hosts key in dns.go."""
    config = DnsConfig.from_json({
        "servers": [{"address": "1.1.1.1",
                     "domains": ["geosite:test@ads", "ext-domain:geosite-test.dat:category-ads"],
                     "expectIps": ["geoip:cn", "ext:geoip-test.dat:test", "10.0.0.1"]}],
        "hosts": {"geosite:TEST": "127.0.0.2", "ext-domain:x": "127.0.0.3"}}, geodata=geodata)
    server = config.servers[0]
    assert [str(rule) for rule in server.domains] == [
        "regexp:^ad[0-9]+\\.example\\.net$", "domain:ads.example.net",
        "domain:doubleclick.example"]
    assert [str(cidr) for cidr in server.expect_ips] == [
        "203.0.113.0/24", "192.0.2.128/25", "198.51.100.0/24", "2001:db8::/32", "10.0.0.1/32"]
    assert [(str(m.rule), str(m.addresses[0])) for m in config.hosts] == [
        ("full:ext-domain:x", "127.0.0.3"), ("domain:example.com", "127.0.0.2"),
        ("full:www.example.org", "127.0.0.2"), ("keyword:tracker", "127.0.0.2"),
        ("regexp:^ad[0-9]+\\.example\\.net$", "127.0.0.2"),
        ("domain:ads.example.net", "127.0.0.2")]


def test_a_list_that_is_not_there_is_named(geodata: GeoData) -> None:
    with pytest.raises(ConfigError, match="'nope' not found"):
        DnsConfig.from_json({"servers": [{"address": "1.1.1.1", "domains": ["geosite:nope"]}]},
                            geodata=geodata)


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ConfigErrors) as info:
        DnsConfig.from_json({"servers": ["https://x/dns-query", "1.1.1.1", "1.2.3.4:53"],
                             "hosts": {"domain:": "1.2.3.4"}, "clientIp": "nope"})
    assert [e.path for e in info.value.errors] == [
        "dns.servers[0]", "dns.servers[2]", 'dns.hosts["domain:"]', "dns.clientIp"]


# ---------------------------------------------------------------- agreement with v2ray 4.34


def _v2ray_accepts(v2ray_bin: str, section: Mapping[str, Any], tmp_path: Path) -> bool:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"dns": section, "outbounds": [{"protocol": "freedom"}]}))
    result = subprocess.run([v2ray_bin, "-test", "-config", str(path)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    return result.returncode == 0


def _v2sync_accepts(section: Mapping[str, Any]) -> bool:
    try:
        DnsConfig.from_json(section)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("section", [
    FULL_SECTION,
    {"servers": ["1.2.3.4:53"]},
    {"servers": [{"address": "1.1.1.1", "clientIp": "example.com"}]},
    {"clientIp": "example.com"},
    {"hosts": {"dotless:a.b": "1.2.3.4"}},
    {"servers": [{"address": "1.1.1.1", "expectIps": ["10.0.0.0/255.0.0.0"]}]},
], ids=["full", "host-port-string", "server-clientIp-domain", "clientIp-domain",
        "dotless-with-dot", "expectIps-dotted-mask"])
def test_v2ray_agrees(section: Mapping[str, Any], v2ray_bin: str, tmp_path: Path) -> None:
    assert _v2sync_accepts(section) == _v2ray_accepts(v2ray_bin, section, tmp_path)
