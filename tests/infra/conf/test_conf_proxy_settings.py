"""The per-protocol settings converters (proxy/<p>/config.py)."""
from __future__ import annotations

from typing import Any, Dict

import pytest

from v2sync.common.errors import ConfigError
from v2sync.proxy.blackhole.config import BlackholeConfig
from v2sync.proxy.freedom.config import FreedomConfig, redirect_host_port
from v2sync.proxy.http.config import HttpServerConfig
from v2sync.proxy.socks.config import SocksServerConfig


def test_socks_defaults() -> None:
    config = SocksServerConfig.from_json({})
    assert config == SocksServerConfig(auth="noauth", udp=False, ip=None, user_level=0,
                                       timeout=None)
    assert dict(config.accounts) == {}


def test_socks_full() -> None:
    config = SocksServerConfig.from_json({
        "auth": "password", "udp": True, "ip": "::ffff:127.0.0.1", "userLevel": 2, "timeout": 30,
        "accounts": [{"user": "a", "pass": "1"}, {"user": "b", "pass": "2"},
                     {"user": "a", "pass": "3"}]})
    assert config.auth == "password" and config.udp and config.user_level == 2
    assert config.ip == "127.0.0.1"  # v4-mapped is read as IPv4
    assert config.timeout == 30
    assert dict(config.accounts) == {"a": "3", "b": "2"}  # later duplicate wins (Go map)


@pytest.mark.parametrize("auth", ["Password", "none", "userpass", ""])
def test_socks_unknown_auth_means_noauth(auth: str) -> None:
    assert SocksServerConfig.from_json({"auth": auth}).auth == "noauth"


@pytest.mark.parametrize("settings, path", [
    ({"udp": 1}, "in.settings.udp"),
    ({"userLevel": -1}, "in.settings.userLevel"),
    ({"accounts": [{"user": 1}]}, "in.settings.accounts[0].user"),
    ({"accounts": {"user": "a"}}, "in.settings.accounts"),
])
def test_socks_bad_types_are_located(settings: Dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        SocksServerConfig.from_json(settings, "in.settings")
    assert info.value.path == path


def test_http_settings() -> None:
    assert HttpServerConfig.from_json({}) == HttpServerConfig()
    config = HttpServerConfig.from_json({"accounts": [{"user": "u", "pass": "p"}],
                                         "allowTransparent": True, "userLevel": 1, "timeout": 4})
    assert dict(config.accounts) == {"u": "p"}
    assert (config.allow_transparent, config.user_level, config.timeout) == (True, 1, 4)


def test_settings_must_be_an_object() -> None:
    with pytest.raises(ConfigError) as info:
        HttpServerConfig.from_json(["x"], "inbounds[0].settings")  # type: ignore[arg-type]
    assert info.value.path == "inbounds[0].settings"


@pytest.mark.parametrize("value, expected", [
    ("", "AsIs"), ("AsIs", "AsIs"), ("useip", "UseIP"), ("UseIP", "UseIP"),
    ("USE_IP", "UseIP"), ("UseIPv4", "UseIPv4"), ("useip4", "UseIPv4"),
    ("use_ip_v6", "UseIPv6"), ("UseIPv6", "UseIPv6"),
])
def test_freedom_domain_strategy_variants(value: str, expected: str) -> None:
    assert FreedomConfig.from_json({"domainStrategy": value}).domain_strategy == expected


def test_freedom_unknown_strategy_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        FreedomConfig.from_json({"domainStrategy": "PreferIPv6"}, "outbounds[0].settings")
    assert info.value.render() == (
        "outbounds[0].settings.domainStrategy: unknown domainStrategy 'PreferIPv6' "
        "(expected one of: AsIs, UseIP, UseIPv4, UseIPv6)")


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("example.com:443", ("example.com", 443)),
    (":8080", ("", 8080)),  # empty host keeps the original host
    ("[::1]:53", ("::1", 53)),
    ("host:0", ("host", 0)),  # port 0 keeps the original port
])
def test_freedom_redirect(text: str, expected: Any) -> None:
    assert FreedomConfig.from_json({"redirect": text}).redirect == expected
    assert redirect_host_port(text) == expected


@pytest.mark.parametrize("text", ["nohost", "::1:53", "[::1]53", "[::1", "h:65536", "h:-1",
                                  "h:http", "h:"])
def test_freedom_bad_redirect(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        FreedomConfig.from_json({"redirect": text}, "o.settings")
    assert info.value.path == "o.settings.redirect"


def test_freedom_other_fields() -> None:
    config = FreedomConfig.from_json({"userLevel": 3, "timeout": 10})
    assert (config.redirect, config.user_level, config.timeout) == (None, 3, 10)


@pytest.mark.parametrize("settings, expected", [
    ({}, "none"),
    ({"response": {"type": "none"}}, "none"),
    ({"response": {"type": "HTTP"}}, "http"),
])
def test_blackhole_response(settings: Dict[str, Any], expected: str) -> None:
    assert BlackholeConfig.from_json(settings).response_type == expected


@pytest.mark.parametrize("settings, path", [
    ({"response": {"type": "teapot"}}, "o.settings.response.type"),
    ({"response": {}}, "o.settings.response.type"),
    ({"response": "http"}, "o.settings.response"),
])
def test_blackhole_bad_response(settings: Dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        BlackholeConfig.from_json(settings, "o.settings")
    assert info.value.path == path
