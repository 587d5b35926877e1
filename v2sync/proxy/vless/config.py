"""VLESS settings (v2ray ``infra/conf/vless.go``), with 4.34's messages.

Inbound: ``clients[{id, level, email, flow}]``, ``decryption`` (must be "none"),
``fallbacks`` (``proxy.fallback``). Outbound: ``vnext[{address, port, users[{id,
encryption ("none"), flow, level, email}]}]``. ``flow`` is accepted whatever it says and
then unused, as in 4.34 (v2fly has no XTLS).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple

from v2sync.common.errors import ConfigError, join_path
from v2sync.common.net import Address
from v2sync.infra.conf.fields import (MAX_UINT16, checked, gather, get_items,
                                      get_server_address, get_str, get_uint, require_object)
from v2sync.common.protocol.users import check_unique_emails
from v2sync.proxy.fallback import Fallback, parse_fallbacks
from v2sync.proxy.vmess.ids import parse_uuid


@dataclass(frozen=True)
class VlessUser:
    key: bytes  # the 16-byte UUID, as on the wire
    level: int = 0
    email: str = ""
    flow: str = ""


def parse_user(raw: Any, path: str, outbound: bool) -> VlessUser:
    entry = require_object(raw, path)
    text = get_str(entry, "id", path)
    try:
        uuid = parse_uuid(text)
    except ValueError as e:
        raise ConfigError(f"VLESS: failed to parse ID {text!r}: {e}", join_path(path, "id"),
                          expected="a UUID, 32 hex digits with optional dashes") from None
    encryption = get_str(entry, "encryption", path)
    if outbound and encryption != "none":
        raise ConfigError('VLESS users: please add/set "encryption":"none" for every user',
                          join_path(path, "encryption"))
    if not outbound and encryption:
        raise ConfigError('VLESS clients: "encryption" should not in inbound settings',
                          join_path(path, "encryption"))
    return VlessUser(uuid, get_uint(entry, "level", path), get_str(entry, "email", path),
                     get_str(entry, "flow", path))


@dataclass(frozen=True)
class VlessInboundConfig:
    users: Tuple[VlessUser, ...] = ()
    fallbacks: Tuple[Fallback, ...] = ()

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "VlessInboundConfig":
        settings = require_object(settings, path)
        entries = [(parse_user(raw, p, outbound=False), p)
                   for raw, p in get_items(settings, "clients", path)]
        check_unique_emails(entries, "VLESS")
        users = tuple(user for user, _ in entries)
        if settings.get("decryption") != "none":
            raise ConfigError('VLESS settings: please add/set "decryption":"none" to every '
                              "settings", join_path(path, "decryption"))
        return cls(users, parse_fallbacks(settings, path, "VLESS"))


@dataclass(frozen=True)
class VlessServer:
    address: Address
    port: int
    users: Tuple[VlessUser, ...]


def _server(raw: Any, where: str) -> VlessServer:
    entry = require_object(raw, where)
    address, users, port = checked(
        lambda: get_server_address(entry, where, 'VLESS vnext: "address" is not set'),
        lambda: _server_users(entry, where),
        lambda: get_uint(entry, "port", where, maximum=MAX_UINT16))
    return VlessServer(address, port, users)


def _server_users(entry: Mapping[str, Any], where: str) -> Tuple[VlessUser, ...]:
    users = tuple(gather(get_items(entry, "users", where),
                         lambda raw, at: parse_user(raw, at, outbound=True)))
    if not users:
        raise ConfigError('VLESS vnext: "users" is empty', join_path(where, "users"))
    return users


@dataclass(frozen=True)
class VlessOutboundConfig:
    servers: Tuple[VlessServer, ...] = ()

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "VlessOutboundConfig":
        settings = require_object(settings, path)
        servers = gather(get_items(settings, "vnext", path), _server)
        if not servers:
            raise ConfigError('VLESS settings: "vnext" is empty', join_path(path, "vnext"))
        return cls(tuple(servers))
