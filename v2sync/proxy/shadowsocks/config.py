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
from v2sync.infra.conf.fields import (MAX_UINT8, checked, gather, get_bool, get_items,
                                      get_server_address, get_server_port, get_str, get_uint,
                                      parse_network_list, require_object)
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
        udp = (Network.UDP,) if get_bool(settings, "udp", path) else ()
        value = settings.get("network") or None
        networks = parse_network_list(value, join_path(path, "network"), udp)
        return cls(_user(settings, path), networks)

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
        items = get_items(settings, "servers", path)
        if not items:
            raise ConfigError("0 Shadowsocks server configured.", join_path(path, "servers"),
                              expected="at least one {address, port, method, password}")
        return cls(tuple(gather(items, _server)))


def _server(raw: Any, path: str) -> ShadowsocksServer:
    entry = require_object(raw, path)
    address, port, _, user = checked(
        lambda: get_server_address(entry, path, "Shadowsocks server address is not set."),
        lambda: get_server_port(entry, path, "Invalid Shadowsocks port."),
        lambda: get_bool(entry, "ota", path),  # parsed and ignored, as 4.34 does
        lambda: _user(entry, path))
    return ShadowsocksServer(address, port, user)
