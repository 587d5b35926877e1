"""VMess settings (v2ray ``infra/conf/vmess.go``, ``proxy/vmess/{inbound,outbound}/config.proto``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple

from v2sync.common.errors import ConfigError, join_path
from v2sync.common.net import Address
from v2sync.infra.conf.fields import (MAX_UINT8, MAX_UINT16, checked, gather, get_bool,
                                      get_items, get_server_address, get_server_port,
                                      get_str, get_uint, require_object)
from v2sync.proxy.vmess.ids import SECURITY_NAMES, Security, VMessUser, parse_uuid


def _user(raw: Any, path: str, default_alter: int = 0, default_level: int = 0) -> VMessUser:
    entry = require_object(raw, path)
    text = get_str(entry, "id", path)
    try:
        uuid = parse_uuid(text)
    except ValueError as e:
        raise ConfigError(f"invalid VMess id {text!r}: {e}", join_path(path, "id"),
                          expected="a UUID, 32 hex digits with optional dashes") from None
    # vmess.go: an unknown security string (even "aes-128-cfb") means auto.
    security = SECURITY_NAMES.get(get_str(entry, "security", path, "auto").lower(), Security.AUTO)
    return VMessUser(
        uuid=uuid,
        alter_id=get_uint(entry, "alterId", path, default_alter, maximum=MAX_UINT16),
        level=get_uint(entry, "level", path, default_level),  # protocol.User: a uint32
        email=get_str(entry, "email", path),
        security=security,
    )


def parse_user(raw: Any, path: str, default_alter: int = 0, default_level: int = 0) -> VMessUser:
    """One ``clients[]`` entry (also a user the API adds: ``features.proxy.UserManager``)."""
    return _user(raw, path, default_alter, default_level)


@dataclass(frozen=True)
class VMessInboundConfig:
    users: Tuple[VMessUser, ...] = ()
    default_alter_id: int = 0
    default_level: int = 0
    disable_insecure_encryption: bool = False

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "VMessInboundConfig":
        settings = require_object(settings, path)
        for key in ("detour", "features"):
            if settings.get(key):
                raise ConfigError(f"vmess '{key}' (dynamic port switching) is not supported by "
                                  "v2sync", join_path(path, key), expected="remove it")
        default = require_object(settings.get("default"), join_path(path, "default"))
        alter = get_uint(default, "alterId", join_path(path, "default"), maximum=MAX_UINT16)
        level = get_uint(default, "level", join_path(path, "default"), maximum=MAX_UINT8)
        users = tuple(_user(raw, p) for raw, p in get_items(settings, "clients", path))
        _refuse_repeated_emails(users, path)
        return cls(users, alter, level,
                   get_bool(settings, "disableInsecureEncryption", path))


def _refuse_repeated_emails(users: Tuple[VMessUser, ...], path: str) -> None:
    """inbound.go adds each client through AddUser, which refuses an email (not empty) that
    another user has, whatever its case."""
    seen = set()
    for index, user in enumerate(users):
        if user.email and user.email.lower() in seen:
            raise ConfigError(f"User {user.email} already exists.",
                              join_path(path, f"clients[{index}].email"))
        seen.add(user.email.lower())


@dataclass(frozen=True)
class VMessServer:
    address: Address
    port: int
    users: Tuple[VMessUser, ...]


def _server(raw: Any, where: str) -> VMessServer:
    entry = require_object(raw, where)
    address, users, port = checked(
        lambda: get_server_address(entry, where, "vmess server address is empty"),
        lambda: _server_users(entry, where),
        lambda: get_server_port(entry, where, "vmess server port is 0"))
    return VMessServer(address, port, users)


def _server_users(entry: Mapping[str, Any], where: str) -> Tuple[VMessUser, ...]:
    users = tuple(gather(get_items(entry, "users", where), _user))
    if not users:
        raise ConfigError("vmess server has no users", join_path(where, "users"),
                          expected="at least one {id}")
    return users


@dataclass(frozen=True)
class VMessOutboundConfig:
    servers: Tuple[VMessServer, ...] = ()

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "VMessOutboundConfig":
        settings = require_object(settings, path)
        servers = gather(get_items(settings, "vnext", path), _server)
        if not servers:
            raise ConfigError("vmess outbound has no servers", join_path(path, "vnext"),
                              expected="at least one {address, port, users}")
        return cls(tuple(servers))
