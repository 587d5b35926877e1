"""Trojan settings (v2ray ``infra/conf/trojan.go``), with 4.34's messages.

Inbound: ``clients[{password, level, email}]`` and ``fallbacks`` (``proxy.fallback``).
Outbound: ``servers[{address, port, password, email, level}]``, one user per server.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple

from v2sync.common.errors import ConfigError, join_path
from v2sync.common.net import Address
from v2sync.infra.conf.fields import (MAX_UINT8, checked, gather, get_items,
                                      get_server_address, get_server_port, get_str, get_uint,
                                      require_object)
from v2sync.common.protocol.users import check_unique_emails
from v2sync.proxy.fallback import Fallback, parse_fallbacks
from v2sync.proxy.trojan.encoding import password_key


@dataclass(frozen=True)
class TrojanUser:
    key: bytes  # hex(SHA224(password)), 56 ASCII bytes, as on the wire
    level: int = 0
    email: str = ""


def parse_user(raw: Any, path: str) -> TrojanUser:
    entry = require_object(raw, path)
    # trojan.go checks nothing here: even an empty password makes a user.
    return TrojanUser(password_key(get_str(entry, "password", path)),
                      get_uint(entry, "level", path, maximum=MAX_UINT8),
                      get_str(entry, "email", path))


@dataclass(frozen=True)
class TrojanInboundConfig:
    users: Tuple[TrojanUser, ...] = ()
    fallbacks: Tuple[Fallback, ...] = ()

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "TrojanInboundConfig":
        settings = require_object(settings, path)
        entries = [(parse_user(raw, p), p) for raw, p in get_items(settings, "clients", path)]
        check_unique_emails(entries, "Trojan")
        users = tuple(user for user, _ in entries)
        return cls(users, parse_fallbacks(settings, path, "Trojan"))


@dataclass(frozen=True)
class TrojanServer:
    address: Address
    port: int
    user: TrojanUser


def _server(raw: Any, where: str) -> TrojanServer:
    entry = require_object(raw, where)
    address, port, user = checked(
        lambda: get_server_address(entry, where, "Trojan server address is not set."),
        lambda: get_server_port(entry, where, "Invalid Trojan port."),
        lambda: _server_user(entry, where))
    return TrojanServer(address, port, user)


def _server_user(entry: Mapping[str, Any], where: str) -> TrojanUser:
    if not get_str(entry, "password", where):
        raise ConfigError("Trojan password is not specified.", join_path(where, "password"))
    return parse_user(entry, where)


@dataclass(frozen=True)
class TrojanOutboundConfig:
    servers: Tuple[TrojanServer, ...] = ()

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "TrojanOutboundConfig":
        settings = require_object(settings, path)
        servers = gather(get_items(settings, "servers", path), _server)
        if not servers:
            raise ConfigError("0 Trojan server configured.", join_path(path, "servers"))
        return cls(tuple(servers))
