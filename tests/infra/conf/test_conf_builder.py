"""Building model.Config: semantic checks, policy and log rules, the packaged default."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from v2sync.common.errors import ConfigErrors
from v2sync.infra.conf.builder import config_from_dict, load_config, load_default
from v2sync.infra.conf.model import (Config, LevelPolicy, LogConfig, PolicyConfig, PortRange,
                                     SniffingConfig)
from v2sync.proxy.freedom.config import FreedomConfig
from v2sync.proxy.socks.config import SocksServerConfig

REPO_ROOT = Path(__file__).resolve().parents[3]
FREEDOM = {"protocol": "freedom"}


def build(**data: Any) -> Config:
    data.setdefault("outbounds", [FREEDOM])
    return config_from_dict(data, "b.json")


def build_errors(**data: Any) -> List[str]:
    data.setdefault("outbounds", [FREEDOM])
    with pytest.raises(ConfigErrors) as info:
        config_from_dict(data, "b.json")
    return [e.render() for e in info.value.errors]


def socks(**extra: Any) -> Dict[str, Any]:
    return {"protocol": "socks", "port": 1080, **extra}


# --------------------------------------------------------------------------- handlers


def test_inbound_fields() -> None:
    sniffing = {"enabled": True, "destOverride": ["https", "http", "tls"]}
    config = build(inbounds=[socks(tag="s", listen="::1", settings={"udp": True},
                                   sniffing=sniffing)])
    inbound = config.inbounds[0]
    assert (inbound.protocol, inbound.tag, inbound.listen) == ("socks", "s", "::1")
    assert inbound.ports == PortRange(1080, 1080)
    assert inbound.sniffing == SniffingConfig(True, ("tls", "http"))
    assert (inbound.path, inbound.file) == ("inbounds[0]", "b.json")
    assert inbound.proxy_settings == SocksServerConfig(udp=True)
    assert inbound.settings == {"udp": True}
    assert inbound.stream.network == "tcp" and inbound.stream.security == "none"


def test_settings_are_deeply_read_only() -> None:
    config = build(inbounds=[{"protocol": "http", "port": 1,
                              "settings": {"accounts": [{"user": "u", "pass": "p"}]}}])
    settings = config.inbounds[0].settings
    with pytest.raises(TypeError):
        settings["x"] = 1  # type: ignore[index]
    assert isinstance(settings["accounts"], tuple)
    with pytest.raises(TypeError):
        settings["accounts"][0]["user"] = "v"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.inbounds[0].tag = "changed"  # type: ignore[misc]


def test_legacy_domain_override_enables_sniffing() -> None:
    config = build(inbounds=[socks(domainOverride=["tls", "http"])])
    assert config.inbounds[0].sniffing == SniffingConfig(True, ("tls", "http"))


def test_sniffing_section_wins_over_domain_override() -> None:
    config = build(inbounds=[socks(domainOverride=["tls"], sniffing={"enabled": False})])
    assert config.inbounds[0].sniffing == SniffingConfig(False, ())


def test_outbound_fields_and_send_through() -> None:
    config = build(outbounds=[{"protocol": "freedom", "tag": "d", "sendThrough": "127.0.0.1",
                               "settings": {"domainStrategy": "useipv4"}}])
    outbound = config.outbounds[0]
    assert outbound.send_through == "127.0.0.1"
    assert outbound.proxy_settings == FreedomConfig(domain_strategy="UseIPv4")


def test_send_through_must_be_ip() -> None:
    assert build_errors(outbounds=[{"protocol": "freedom", "sendThrough": "example.com"}]) == [
        "b.json: outbounds[0].sendThrough: unable to send through 'example.com' "
        "(expected an IP address)"]


def test_listen_must_be_an_ip_address() -> None:
    assert build_errors(inbounds=[socks(listen="example.com")]) == [
        "b.json: inbounds[0].listen: unable to listen on domain address 'example.com' "
        "(expected an IP address)"]


def test_listen_localhost_is_accepted_like_v2ray() -> None:
    assert build(inbounds=[socks(listen="localhost")]).inbounds[0].listen == "127.0.0.1"


def test_unix_listen_is_only_reported_as_unsupported() -> None:
    inbound = {"protocol": "socks", "listen": "/run/v2sync.sock"}  # no port: fine for a socket
    assert build_errors(inbounds=[inbound]) == [
        "b.json: inbounds[0].listen: listening on unix socket '/run/v2sync.sock' is not "
        "supported by v2sync (expected an IP address)"]


def test_inbound_needs_a_port() -> None:
    assert build_errors(inbounds=[{"protocol": "http", "listen": "127.0.0.1"}]) == [
        "b.json: inbounds[0].port: missing port (an inbound listening on IP needs a port)"]


def test_deprecated_top_level_port_applies_to_first_inbound() -> None:
    config = build(port=1234, inbounds=[{"protocol": "http"}, {"protocol": "http", "port": 5}])
    assert [i.ports.first for i in config.inbounds] == [1234, 5]


def test_port_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V2SYNC_TEST_PORT", "7000-7001")
    assert list(build(inbounds=[socks(port="env:V2SYNC_TEST_PORT")]).inbounds[0].ports) == \
        [7000, 7001]


def test_no_outbound_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # v2ray -test says "Configuration OK."; 4.34 then closes every connection
    config = config_from_dict({"inbounds": [socks()]}, "b.json")
    assert config.outbounds == () and len(config.inbounds) == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "no outbound configured: every connection will be closed"]


def test_duplicate_tags_are_errors() -> None:
    errors = build_errors(inbounds=[socks(tag="a"), socks(tag="a"), socks(), socks()],
                          outbounds=[{"protocol": "freedom", "tag": "o"},
                                     {"protocol": "blackhole", "tag": "o"}])
    assert errors == [
        "b.json: inbounds[1].tag: duplicate inbound tag 'a' "
        "(tags must be unique; first used at b.json: inbounds[0])",
        "b.json: outbounds[1].tag: duplicate outbound tag 'o' "
        "(tags must be unique; first used at b.json: outbounds[0])"]


def test_settings_converter_errors_are_located() -> None:
    errors = build_errors(outbounds=[
        {"protocol": "freedom", "settings": {"domainStrategy": "fastest"}},
        {"protocol": "freedom", "tag": "r", "settings": {"redirect": "nohost"}}])
    assert errors == [
        "b.json: outbounds[0].settings.domainStrategy: unknown domainStrategy 'fastest' "
        "(expected one of: AsIs, UseIP, UseIPv4, UseIPv6)",
        "b.json: outbounds[1].settings.redirect: invalid redirect address 'nohost' "
        "(expected \"host:port\", \"[ipv6]:port\" or \":port\")"]


def test_errors_after_merge_name_the_file_the_item_came_from(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    extra = tmp_path / "extra.json"
    base.write_text(json.dumps({"inbounds": [socks(tag="a"), socks(tag="b")],
                                "outbounds": [FREEDOM]}))
    extra.write_text(json.dumps({"inbounds": [socks(tag="b", listen="bad.example")]}))
    with pytest.raises(ConfigErrors) as info:
        load_config([str(base), str(extra)])
    assert [(e.file, e.path) for e in info.value.errors] == [(str(extra), "inbounds[0].listen")]


def test_schema_and_build_errors_come_in_one_report(tmp_path: Path) -> None:
    first = tmp_path / "first.json"
    second = tmp_path / "second.json"
    first.write_text(json.dumps({
        "inbounds": [socks(settings={"udp": "no"}), socks(port="70000"),
                     {"protocol": "http", "port": 1, "tag": "t"}],
        "inboundDetour": [socks(port=True), {"protocol": "http", "port": 2, "tag": "t"}],
        "outbounds": [{"protocol": "freedom", "settings": {"redirect": "bad"}}]}))
    second.write_text(json.dumps({
        "reverse": {"bridges": [{"tag": "bridge", "domain": "r.test"}]},
        "policy": {"levels": {"0": {"connIdle": "5"}}}}))
    with pytest.raises(ConfigErrors) as info:
        load_config([str(first), str(second)])
    assert [(Path(e.file).name, e.path) for e in info.value.errors] == [
        ("first.json", "inboundDetour[0].port"),  # schema
        ("first.json", "inbounds[0].settings.udp"),  # schema
        ("first.json", "inbounds[1].port"),  # builder: port out of range
        ("first.json", "inbounds[2].tag"),  # builder: duplicate of inboundDetour[1]
        ("first.json", "outbounds[0].settings.redirect"),  # freedom converter
        ("second.json", "policy.levels.0.connIdle"),  # schema
        ("second.json", "reverse.bridges"),  # unsupported feature
    ]


def test_config_from_dict_also_reports_everything() -> None:
    errors = build_errors(inbounds=[socks(port=-5)],
                          outbounds=[{"protocol": "blackhole", "settings": {"response": 1}},
                                     {"protocol": "freedom", "settings": {"redirect": "x"}}])
    assert [e.split(": ")[1] for e in errors] == [
        "inbounds[0].port", "outbounds[0].settings.response", "outbounds[1].settings.redirect"]


def test_transport_fills_missing_stream_settings() -> None:
    config = build(transport={"tcpSettings": {"header": {"type": "none"}}},
                   inbounds=[socks(streamSettings={"tcpSettings": {"acceptProxyProtocol": False}}),
                             socks(port=2)])
    assert config.inbounds[0].stream.settings["tcpSettings"] == {"acceptProxyProtocol": False}
    assert config.inbounds[1].stream.settings["tcpSettings"] == {"header": {"type": "none"}}


def test_network_aliases_canonicalize(monkeypatch: pytest.MonkeyPatch) -> None:
    from v2sync.infra.conf import validate

    monkeypatch.setattr(validate, "SUPPORTED_NETWORKS", frozenset({"tcp", "websocket"}))
    config = build(inbounds=[socks(streamSettings={"network": "WS", "wsSettings": {"path": "/x"}})])
    assert config.inbounds[0].stream.network == "websocket"
    assert config.inbounds[0].stream.settings["wsSettings"] == {"path": "/x"}


def test_routing_and_dns_are_kept_read_only() -> None:
    config = build(routing={"domainStrategy": "AsIs"}, dns={"tag": "dns"})
    assert config.routing == {"domainStrategy": "AsIs"} and config.dns == {"tag": "dns"}
    assert build().routing == {} and not build().stats_enabled
    assert build(stats={}).stats_enabled


# --------------------------------------------------------------------------- policy


def test_policy_defaults_without_section() -> None:
    policy = build().policy
    assert policy == PolicyConfig()
    assert not policy.configured
    assert policy.for_level(0) == LevelPolicy(60.0, 300.0, 1.0, 1.0, 512 * 1024, False, False)
    assert policy.for_level(1).conn_idle == 600.0  # DefaultManager's level-1 rule
    assert policy.for_level(2).conn_idle == 300.0


def test_policy_section_drops_level1_rule() -> None:
    policy = build(policy={}).policy
    assert policy.configured
    assert policy.for_level(1) == LevelPolicy()


def test_configured_level_missing_fields_take_defaults() -> None:
    policy = build(policy={"levels": {"0": {"connIdle": 10, "bufferSize": 4,
                                            "statsUserUplink": True}}}).policy
    assert policy.for_level(0) == LevelPolicy(conn_idle=10.0, buffer_size=4096,
                                              stats_user_uplink=True)
    assert policy.for_level(5) == LevelPolicy()


@pytest.mark.parametrize("size, expected", [(0, 0), (-1, -1), (-100, -1), (1, 1024)])
def test_buffer_size_in_kib(size: int, expected: int) -> None:
    policy = build(policy={"levels": {"3": {"bufferSize": size}}}).policy
    assert policy.for_level(3).buffer_size == expected


def test_system_policy() -> None:
    system = build(policy={"system": {"statsInboundUplink": True,
                                      "statsOutboundDownlink": True}}).policy.system
    assert (system.stats_inbound_uplink, system.stats_inbound_downlink,
            system.stats_outbound_uplink, system.stats_outbound_downlink) == \
        (True, False, False, True)


def test_level_number_out_of_range() -> None:
    assert build_errors(policy={"levels": {"4294967296": {}}}) == [
        "b.json: policy.levels.4294967296: user level 4294967296 is out of range "
        "(expected 0-4294967295)"]


# --------------------------------------------------------------------------- log


@pytest.mark.parametrize("section, expected", [
    (None, LogConfig(access=None, error="", level="warning")),
    ({}, LogConfig(access="", error="", level="warning")),
    ({"access": "none", "error": "none"}, LogConfig(None, None, "warning")),
    ({"access": "/tmp/a.log", "error": "/tmp/e.log", "loglevel": "DEBUG"},
     LogConfig("/tmp/a.log", "/tmp/e.log", "debug")),
    ({"loglevel": "info"}, LogConfig("", "", "info")),
    ({"loglevel": "error"}, LogConfig("", "", "error")),
    ({"loglevel": "none", "access": "/tmp/a.log"}, LogConfig(None, None, "none")),
    ({"loglevel": "chatty"}, LogConfig("", "", "warning")),
])
def test_log_semantics(section: Any, expected: LogConfig) -> None:
    data = {} if section is None else {"log": section}
    assert build(**data).log == expected


# --------------------------------------------------------------------------- default


def test_default_config() -> None:
    config = load_default()
    assert [(i.tag, i.protocol, i.listen, i.ports.first) for i in config.inbounds] == [
        ("socks-in", "socks", "127.0.0.1", 1080), ("http-in", "http", "127.0.0.1", 8080)]
    assert config.inbounds[0].proxy_settings.udp is True
    assert [(o.tag, o.protocol) for o in config.outbounds] == [("direct", "freedom"),
                                                                ("block", "blackhole")]
    assert config.log.level == "warning"


def test_conf_config_json_is_the_default() -> None:
    packaged = REPO_ROOT / "v2sync" / "infra" / "conf" / "default.json"
    assert (REPO_ROOT / "conf" / "config.json").read_text() == packaged.read_text()


def test_default_loads_from_another_working_directory(tmp_path: Path) -> None:
    code = ("from v2sync.infra.conf.builder import load_default; "
            "c = load_default(); print(c.inbounds[0].tag, c.outbounds[0].tag)")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["socks-in", "direct"]


def test_dns_section_is_built_and_doh_refused_by_name(tmp_path) -> None:
    from v2sync.infra.conf.builder import config_from_dict
    base = {"outbounds": [{"protocol": "freedom"}]}
    config = config_from_dict({**base, "dns": {"servers": ["127.0.0.1"],
                                               "hosts": {"domain:example.test": "10.0.0.1"}}})
    assert config.dns_settings is not None and len(config.dns_settings.servers) == 1
    with pytest.raises(ConfigErrors) as err:
        config_from_dict({**base, "dns": {"servers": ["https://1.1.1.1/dns-query"]}})
    assert "not supported" in str(err.value) and "dns.servers[0]" in str(err.value)


def test_routing_section_is_built_with_located_errors() -> None:
    from v2sync.infra.conf.builder import config_from_dict
    base = {"outbounds": [{"protocol": "freedom", "tag": "direct"}]}
    config = config_from_dict({**base, "routing": {"rules": [
        {"type": "field", "domain": ["domain:example.test"], "outboundTag": "direct"}]}})
    assert len(config.routing_settings.rules) == 1
    with pytest.raises(ConfigErrors) as err:
        config_from_dict({**base, "routing": {"rules": [
            {"type": "field", "attrs": "attrs[':method'] == 'GET'", "outboundTag": "direct"}]}})
    assert "routing.rules[0]" in str(err.value) and "attrs" in str(err.value)


# --------------------------------------------------------------------------- every error


def test_every_error_of_each_handler_is_reported() -> None:
    # schema errors (port, kcp) used to drop the whole handler before the builder saw it
    errors = build_errors(
        inbounds=[socks(listen="bad.example", port=True),
                  {"protocol": "vmess", "port": 1, "streamSettings": {"network": "kcp"},
                   "settings": {"clients": [{"id": "not-a-uuid"}]}}],
        outbounds=[{"protocol": "freedom", "sendThrough": "x.example",
                    "settings": {"redirect": "bad"}, "streamSettings": {"network": "kcp"}}])
    assert [e.split(": ")[1] for e in errors] == [
        "inbounds[0].listen", "inbounds[0].port",
        "inbounds[1].settings.clients[0].id", "inbounds[1].streamSettings.network",
        "outbounds[0].sendThrough", "outbounds[0].settings.redirect",
        "outbounds[0].streamSettings.network"]


def test_a_step_whose_input_was_refused_is_skipped_not_repeated() -> None:
    # the port's schema error is not followed by the builder's own port error
    errors = build_errors(inbounds=[socks(port=[1]), socks(port="70000")])
    assert errors == [
        "b.json: inbounds[0].port: invalid port [...] "
        "(expected an integer 0-65535, a range \"a-b\" or \"env:VAR\")",
        "b.json: inbounds[1].port: port '70000' is out of range "
        "(expected an integer 0-65535, a range \"a-b\" or \"env:VAR\")"]


@pytest.mark.parametrize("key, value", [("tag", ["a"]), ("protocol", ["socks"]),
                                        ("tag", {"a": 1}), ("settings", [1]),
                                        ("streamSettings", 5), ("listen", 7)])
def test_wrongly_typed_handler_fields_are_reported_not_crashed_on(key: str, value: Any) -> None:
    errors = build_errors(inbounds=[socks(**{key: value}), socks(**{key: value})])
    assert errors and all(": inbounds[" in e for e in errors)


def test_a_handler_that_is_not_an_object_is_reported_once() -> None:
    assert build_errors(inbounds=[5, socks(listen="bad.example")]) == [
        "b.json: inbounds[0]: 5 is an integer (expected an object)",
        "b.json: inbounds[1].listen: unable to listen on domain address 'bad.example' "
        "(expected an IP address)"]


@pytest.mark.parametrize("key, value, message", [
    ("listen", "::1%lo", "unable to listen on domain address"),
    ("sendThrough", "fe80::1%lo", "unable to send through"),
])
def test_an_ipv6_address_with_a_zone_is_a_name_as_v2ray_test_says(
        key: str, value: str, message: str, v2ray_bin: str, tmp_path) -> None:
    """Go's ParseIP takes no zone, so 4.34 reads ``::1%lo`` as a domain and refuses it
    where an IP is wanted; v2sync took it and then failed to listen at start."""
    handler = socks(listen=value) if key == "listen" else {"protocol": "freedom", key: value}
    config = {"inbounds": [handler]} if key == "listen" else {"outbounds": [handler]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([v2ray_bin, "-test", "-config", str(path)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0 and message.split()[-1] in result.stdout, result.stdout
    errors = build_errors(**config)
    assert len(errors) == 1 and message in errors[0], errors
