"""Shadowsocks settings: what 4.34 accepts and refuses, checked by running ``v2ray -test`` on
the same file as v2sync's loader; converters called directly for the typed results."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest

from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.common.net import Network
from v2sync.infra.conf.builder import load_config
from v2sync.proxy.shadowsocks.config import ShadowsocksClientConfig, ShadowsocksServerConfig
from v2sync.proxy.shadowsocks.encoding import AES_256_GCM, CHACHA20_POLY1305, NONE

V2RAY_TEST_TIMEOUT = 30
CONFIG_ERROR_EXIT = 23


def _server(settings: Dict[str, Any]) -> Dict[str, Any]:
    return {"inbounds": [{"protocol": "shadowsocks", "listen": "127.0.0.1", "port": 1080,
                          "settings": settings}],
            "outbounds": [{"protocol": "freedom"}]}


def _client(settings: Dict[str, Any]) -> Dict[str, Any]:
    return {"inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": 1080}],
            "outbounds": [{"protocol": "shadowsocks", "settings": settings}]}


def _one(**extra: Any) -> Dict[str, Any]:
    return {"servers": [{"address": "127.0.0.1", "port": 8388, "method": "aes-128-gcm",
                         "password": "pw", **extra}]}


ACCEPTED = {
    "server-aes-128-gcm": _server({"method": "aes-128-gcm", "password": "pw"}),
    "server-upper-case-alias": _server({"method": "AEAD_AES_256_GCM", "password": "pw"}),
    "server-ietf-alias": _server({"method": "chacha20-ietf-poly1305", "password": "pw"}),
    "server-plain": _server({"method": "plain", "password": "pw", "network": "tcp,udp"}),
    "server-udp-array": _server({"method": "none", "password": "pw", "network": ["udp"],
                                 "level": 1, "email": "a@b"}),
    "server-deprecated-udp": _server({"method": "aes-256-gcm", "password": "pw", "udp": True}),
    "client-one": _client(_one()),
    "client-ota-ignored": _client(_one(ota=True, level=2, email="c@d")),
}

# (config, the phrase both v2ray -test and v2sync print)
REFUSED = {
    "stream-cipher": (_server({"method": "aes-256-cfb", "password": "pw"}),
                      "unknown cipher method: aes-256-cfb"),
    "no-method": (_server({"password": "pw"}), "unknown cipher method"),
    "2022-method": (_server({"method": "2022-blake3-aes-128-gcm", "password": "pw"}),
                    "unknown cipher method: 2022-blake3-aes-128-gcm"),
    "no-password": (_server({"method": "aes-128-gcm"}), "password is not specified"),
    "client-no-servers": (_client({"servers": []}), "0 Shadowsocks server configured"),
    "client-no-address": (_client({"servers": [{"port": 1, "method": "none",
                                                "password": "pw"}]}),
                          "address is not set"),
    "client-port-zero": (_client(_one(port=0)), "Invalid Shadowsocks port"),
    "client-bad-method": (_client(_one(method="rc4-md5")), "unknown cipher method: rc4-md5"),
    "client-no-password": (_client(_one(password="")), "password is not specified"),
}


def _write(tmp_path: Path, config: Dict[str, Any]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def _v2ray_test(v2ray_bin: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([v2ray_bin, "-test", "-config", str(path)], cwd=path.parent,
                          capture_output=True, text=True, timeout=V2RAY_TEST_TIMEOUT)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_by_both(name: str, v2ray_bin: str, tmp_path: Path) -> None:
    path = _write(tmp_path, ACCEPTED[name])
    result = _v2ray_test(v2ray_bin, path)
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_config([str(path)])
    assert config.inbounds and config.outbounds


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_by_both_with_the_same_reason(name: str, v2ray_bin: str,
                                              tmp_path: Path) -> None:
    config, phrase = REFUSED[name]
    path = _write(tmp_path, config)
    result = _v2ray_test(v2ray_bin, path)
    assert result.returncode == CONFIG_ERROR_EXIT
    assert phrase in result.stdout + result.stderr
    with pytest.raises(ConfigErrors) as info:
        load_config([str(path)])
    rendered = "\n".join(e.render() for e in info.value.errors)
    assert phrase in rendered
    assert ".settings" in rendered  # located at the JSON path


def test_server_settings_typed() -> None:
    built = ShadowsocksServerConfig.from_json({"method": "Chacha20-Poly1305", "password": "pw",
                                               "network": "udp", "udp": True, "level": 3,
                                               "email": "u@example.com"})
    assert built.user.account.method is CHACHA20_POLY1305
    assert len(built.user.account.key) == 32
    assert built.networks == (Network.UDP,)
    assert (built.user.level, built.user.email) == (3, "u@example.com")
    assert ShadowsocksServerConfig.from_json({"method": "none", "password": "p"}).networks == (
        Network.TCP,)
    both = ShadowsocksServerConfig.from_json({"method": "plain", "password": "p",
                                              "network": ["tcp", "udp"]})
    assert both.tcp and both.udp and both.user.account.method is NONE


def test_unknown_network_opens_nothing() -> None:
    # As 4.34: "tcp, udp" keeps its space, and " udp" opens nothing; `udp: true` still adds UDP.
    def networks(**settings):
        return ShadowsocksServerConfig.from_json({"method": "none", "password": "p", **settings},
                                                 "settings").networks
    assert networks(network="tcp, udp") == (Network.TCP,)
    assert networks(network=" udp", udp=True) == (Network.UDP,)
    assert networks(udp=True) == (Network.TCP, Network.UDP)
    with pytest.raises(ConfigError) as info:
        networks(network=" udp")
    assert info.value.path == "settings.network" and "no network to serve" in str(info.value)


def test_client_settings_typed() -> None:
    built = ShadowsocksClientConfig.from_json(
        {"servers": [_one()["servers"][0],
                     {"address": "example.com", "port": 443, "method": "aes-256-gcm",
                      "password": "x", "level": 1}]})
    assert [s.port for s in built.servers] == [8388, 443]
    assert built.servers[1].user.account.method is AES_256_GCM
    assert str(built.servers[1].address) == "example.com"
