"""The test .dat files in tests/vectors/ and parity with the real v2ray's config check.

The files are written by ``tools/geodata_vectors.py`` with the ``protobuf`` runtime and 4.34's
own message definitions (see ``tests/vectors/GEODATA.md``). ``GEOIP_TEST`` / ``GEOSITE_TEST``
below are their documented content as v2sync's reader must see it; v2sync's own test encoder
must agree with protobuf byte for byte.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Mapping

import pytest

from v2sync.app.router import Router, RoutingContext, from_json
from v2sync.app.router.geodata import GeoData, SiteDomain, encode_geoip_list, encode_geosite_list
from v2sync.app.router.matchers import DomainKind
from v2sync.common.errors import ConfigError
from v2sync.common.net import Destination

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
GEOIP_VECTOR = VECTORS / "geoip-test.dat"
GEOSITE_VECTOR = VECTORS / "geosite-test.dat"
V2RAY_TEST_TIMEOUT = 30

GEOIP_TEST = [
    ("TEST", ["198.51.100.0/24", "2001:db8::/32"]),
    ("CN", ["203.0.113.0/24", "192.0.2.128/25"]),
    # Deliberately smaller than the built-in list: a file's list must win over it.
    ("PRIVATE", ["10.0.0.0/8", "127.0.0.0/8", "::1/128"]),
]
GEOSITE_TEST = [
    ("TEST", [
        SiteDomain(DomainKind.DOMAIN, "example.com"),
        SiteDomain(DomainKind.FULL, "www.example.org"),
        SiteDomain(DomainKind.PLAIN, "tracker"),
        SiteDomain(DomainKind.REGEX, r"^ad[0-9]+\.example\.net$", ("ads",)),
        SiteDomain(DomainKind.DOMAIN, "ads.example.net", ("ads", "cn")),
    ]),
    ("CATEGORY-ADS", [SiteDomain(DomainKind.DOMAIN, "doubleclick.example", ("ads",))]),
]


def geoip_vector_bytes() -> bytes:
    return encode_geoip_list(GEOIP_TEST)


def geosite_vector_bytes() -> bytes:
    return encode_geosite_list(GEOSITE_TEST)


def _independent_encoder() -> ModuleType:
    path = Path(__file__).resolve().parents[3] / "tools" / "geodata_vectors.py"
    spec = importlib.util.spec_from_file_location("geodata_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vector_files_are_what_protobuf_writes() -> None:
    """tools/geodata_vectors.py (protobuf + 4.34's .proto) made the files on disk."""
    independent = _independent_encoder()
    assert GEOIP_VECTOR.read_bytes() == independent.geoip_bytes()
    assert GEOSITE_VECTOR.read_bytes() == independent.geosite_bytes()


def test_v2sync_encoder_agrees_with_protobuf() -> None:
    assert geoip_vector_bytes() == GEOIP_VECTOR.read_bytes()
    assert geosite_vector_bytes() == GEOSITE_VECTOR.read_bytes()


def test_vector_files_decode_to_the_documented_lists() -> None:
    data = GeoData([str(VECTORS)])
    assert [str(c) for c in data.geoip("geoip-test.dat", "test")] == ["198.51.100.0/24", "2001:db8::/32"]
    assert data.geosite("geosite-test.dat", "Test") == GEOSITE_TEST[0][1]
    assert data.geosite("geosite-test.dat", "category-ads") == GEOSITE_TEST[1][1]


@pytest.fixture
def asset_dir(tmp_path: Path) -> Path:
    """The vectors under the names v2ray looks for, plus their own names for ext: entries."""
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(GEOIP_VECTOR, assets / "geoip.dat")
    shutil.copy(GEOSITE_VECTOR, assets / "geosite.dat")
    shutil.copy(GEOIP_VECTOR, assets / GEOIP_VECTOR.name)
    shutil.copy(GEOSITE_VECTOR, assets / GEOSITE_VECTOR.name)
    return assets


def every_field_routing() -> Dict[str, Any]:
    """One rule per field and prefix 4.34 supports (attrs aside), plus a balancer."""
    rule = lambda tag, **fields: {"type": "field", "outboundTag": tag, **fields}  # noqa: E731
    return {
        "domainStrategy": "IPOnDemand",
        "balancers": [{"tag": "pool", "selector": ["px-"]}],
        "rules": [
            rule("block", domain=["geosite:test@ads", "ext:geosite-test.dat:category-ads"]),
            rule("direct", domain=["geosite:test", "ext-domain:geosite-test.dat:test"]),
            rule("direct", domain=["domain:example.com", "full:a.example", "regexp:^x[0-9]+$",
                                   "keyword:tracker", "plainword", "dotless:intra", "dotless:"]),
            rule("block", ip=["geoip:private", "geoip:cn", "ext:geoip-test.dat:test",
                              "ext-ip:geoip-test.dat:cn", "192.0.2.1", "2001:db8::/48"]),
            rule("direct", port="53,443,1000-2000", network="udp"),
            rule("direct", sourcePort=12345, source=["geoip:private", "198.51.100.7"]),
            rule("direct", user=["a@example.com"], inboundTag=["socks-in"]),
            rule("direct", protocol=["bittorrent", "http"]),
            {"type": "field", "balancerTag": "pool", "network": "tcp,udp", "inboundTag": "vmess-in"},
        ],
    }


def v2ray_config(routing: Mapping[str, Any]) -> Dict[str, Any]:
    outbounds = [{"protocol": "freedom", "tag": tag} for tag in ("direct", "px-1", "px-2")]
    outbounds.append({"protocol": "blackhole", "tag": "block"})
    return {"log": {"loglevel": "warning"}, "outbounds": outbounds, "routing": routing}


def run_v2ray_test(v2ray_bin: str, config: Mapping[str, Any], assets: Path,
                   tmp_path: Path) -> "subprocess.CompletedProcess[str]":
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "V2RAY_LOCATION_ASSET": str(assets)}
    return subprocess.run([v2ray_bin, "-test", "-config", str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=V2RAY_TEST_TIMEOUT)


def test_v2ray_and_v2sync_accept_every_field(v2ray_bin: str, asset_dir: Path, tmp_path: Path) -> None:
    routing = every_field_routing()
    result = run_v2ray_test(v2ray_bin, v2ray_config(routing), asset_dir, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration OK" in result.stdout
    config = from_json(routing, geodata=GeoData([str(asset_dir)]))
    router = Router(config, resolve=lambda name: [], outbound_tags=["direct", "px-1", "px-2", "block"])

    def route(host: str, port: int = 80, inbound: str = "socks-in") -> Any:
        return router.pick_route(RoutingContext(inbound, Destination.tcp("203.0.113.9", 40000),
                                                Destination.tcp(host, port)))

    assert route("ad7.example.net") == "block"        # geosite:test@ads (regex entry)
    assert route("doubleclick.example") == "block"    # ext: geosite list
    assert route("www.example.com") == "direct"       # geosite:test, domain entry
    assert route("10.1.2.3") == "block"               # the file's private list
    assert route("172.16.0.1") is None                # not in the file's private list: file wins
    assert route("192.0.2.200") == "block"            # geoip:cn from the file
    assert route("8.8.8.8", inbound="vmess-in") in ("px-1", "px-2")


@pytest.mark.parametrize("entry, what", [
    ({"domain": ["geosite:nosuchlist"]}, "nosuchlist"),
    ({"ip": ["geoip:xx"]}, "'xx'"),
    ({"domain": ["ext:missing.dat:test"]}, "missing.dat"),
])
def test_v2ray_and_v2sync_both_refuse_a_missing_list(v2ray_bin: str, asset_dir: Path, tmp_path: Path,
                                                      entry: Dict[str, List[str]], what: str) -> None:
    routing = {"rules": [{"type": "field", "outboundTag": "direct", **entry}]}
    result = run_v2ray_test(v2ray_bin, v2ray_config(routing), asset_dir, tmp_path)
    assert result.returncode != 0
    with pytest.raises(ConfigError) as caught:
        from_json(routing, geodata=GeoData([str(asset_dir)]))
    assert what in str(caught.value)
    assert caught.value.path.startswith("routing.rules[0].")


def test_v2ray_and_v2sync_accept_legacy_settings_rules(v2ray_bin: str, asset_dir: Path,
                                                       tmp_path: Path) -> None:
    """The deprecated settings{rules, domainStrategy} block: accepted by both."""
    routing = {"settings": {"domainStrategy": "IPIfNonMatch",
                            "rules": [{"type": "field", "network": "udp", "outboundTag": "block"}]}}
    result = run_v2ray_test(v2ray_bin, v2ray_config(routing), asset_dir, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    config = from_json(routing, geodata=GeoData([str(asset_dir)]))
    router = Router(config, outbound_tags=["direct", "block"])
    assert router.pick_route(RoutingContext("in", None, Destination.udp("1.1.1.1", 53))) == "block"
    assert router.pick_route(RoutingContext("in", None, Destination.tcp("1.1.1.1", 53))) is None



# A lone port in a PortList is a JSON number to 4.34 (no leading zero); a range's ends are
# ParseUint's (a leading zero is fine). (value, accepted)
PORT_LISTS = [("053", False), (" 053 ", False), ("80,053", False), ("00080", False),
              ("053-060", True), ("0", True), ("80, 443", True), ("1000 - 2000", False)]


@pytest.mark.parametrize("field", ["port", "sourcePort"])
@pytest.mark.parametrize("value, accepted", PORT_LISTS, ids=[v for v, _ in PORT_LISTS])
def test_port_lists_are_read_as_4_34_reads_them(v2ray_bin: str, asset_dir: Path, tmp_path: Path,
                                                field: str, value: str, accepted: bool) -> None:
    routing = {"rules": [{"type": "field", field: value, "outboundTag": "direct"}]}
    result = run_v2ray_test(v2ray_bin, v2ray_config(routing), asset_dir, tmp_path)
    assert (result.returncode == 0) == accepted, result.stdout + result.stderr
    if accepted:
        from_json(routing, geodata=GeoData([str(asset_dir)]))
    else:
        with pytest.raises(ConfigError):
            from_json(routing, geodata=GeoData([str(asset_dir)]))
