"""Shadowsocks settings (v2ray ``infra/conf/shadowsocks.go``, ``proxy/shadowsocks/config.proto``).

The server is single-user: ``method``, ``password``, ``network`` (``NetworkList``, default
tcp), ``udp`` (deprecated: adds udp), ``level``, ``email``. The client has ``servers[]`` of
``{address, port, method, password, email, level, ota}``; ``ota`` is parsed and ignored, as
4.34 ignores it (AEAD only). Errors carry 4.34's wording where it has one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple

from v2sync.common.errors import ConfigError, join_path
from v2sync.common.net import Address, Network
from v2sync.infra.conf.fields import (MAX_UINT8, MAX_UINT16, get_bool, get_str, get_uint,
                                      require_object)
from v2sync.proxy.dokodemo.config import parse_network_list
from v2sync.proxy.shadowsocks.encoding import METHODS, Account, method_named

METHODS_EXPECTED = "one of " + ", ".join(sorted(METHODS))


@dataclass(frozen=True)
class ShadowsocksUser:
    account: Account
    level: int = 0
    email: str = ""


def _user(entry: Mapping[str, Any], path: str) -> ShadowsocksUser:
    password = get_str(entry, "password", path)
    if not password:
        raise ConfigError("Shadowsocks password is not specified.", join_path(path, "password"),
                          expected="a non-empty string")
    name = get_str(entry, "method", path)
    method = method_named(name)
    if method is None:
        raise ConfigError(f"unknown cipher method: {name}", join_path(path, "method"),
                          expected=METHODS_EXPECTED)
    return ShadowsocksUser(Account.from_password(method, password),
                           get_uint(entry, "level", path, maximum=MAX_UINT8),
                           get_str(entry, "email", path))


@dataclass(frozen=True)
class ShadowsocksServerConfig:
    user: ShadowsocksUser
    networks: Tuple[Network, ...] = (Network.TCP,)

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "ShadowsocksServerConfig":
        settings = require_object(settings, path)
        # server.go Network(): an empty list means tcp; "udp": true appends udp.
        value = settings.get("network") or None
        networks = parse_network_list(value, join_path(path, "network"))
        if get_bool(settings, "udp", path):
            networks += (Network.UDP,)
        return cls(_user(settings, path), tuple(dict.fromkeys(networks)))

    @property
    def tcp(self) -> bool:
        return Network.TCP in self.networks

    @property
    def udp(self) -> bool:
        return Network.UDP in self.networks


@dataclass(frozen=True)
class ShadowsocksServer:
    address: Address
    port: int
    user: ShadowsocksUser


@dataclass(frozen=True)
class ShadowsocksClientConfig:
    servers: Tuple[ShadowsocksServer, ...]

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "ShadowsocksClientConfig":
        settings = require_object(settings, path)
        where = join_path(path, "servers")
        items = settings.get("servers") or []
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{type(items).__name__} is not an array", where,
                              expected="expected an array")
        if not items:
            raise ConfigError("0 Shadowsocks server configured.", where,
                              expected="at least one {address, port, method, password}")
        return cls(tuple(_server(require_object(raw, f"{where}[{i}]"), f"{where}[{i}]")
                         for i, raw in enumerate(items)))


def _server(entry: Mapping[str, Any], path: str) -> ShadowsocksServer:
    address = get_str(entry, "address", path)
    if not address:
        raise ConfigError("Shadowsocks server address is not set.", join_path(path, "address"),
                          expected="a host name or IP")
    port = get_uint(entry, "port", path, maximum=MAX_UINT16)
    if port == 0:
        raise ConfigError("Invalid Shadowsocks port.", join_path(path, "port"),
                          expected="1-65535")
    get_bool(entry, "ota", path)  # parsed and ignored, as 4.34 does
    return ShadowsocksServer(Address.parse(address), port, _user(entry, path))
