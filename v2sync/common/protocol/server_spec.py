"""Servers an outbound connects to, with their accounts (v2ray ``common/protocol/server_spec.go``,
``server_picker.go``), as the HTTP and SOCKS outbounds configure them:
``servers[{address, port, users[{user, pass, level, email}]}]``.

Servers are used round-robin; a server's user is picked at random per connection (4.34
``ServerSpec.PickUser``); a server without users connects without credentials.
"""
from __future__ import annotations

import itertools
import logging
import random
import threading
from dataclasses import dataclass
from typing import Any, Generic, Mapping, Optional, Sequence, Tuple, TypeVar

from v2sync.common.errors import ConfigError, join_path
from v2sync.common.net import Address, Destination
from v2sync.infra.conf.fields import (MAX_UINT16, MAX_UINT32, checked, gather, get_items,
                                      get_server_address, get_str, get_uint, require_object)

log = logging.getLogger(__name__)

S = TypeVar("S")


@dataclass(frozen=True)
class Account:
    user: str
    password: str
    level: int = 0
    email: str = ""


@dataclass(frozen=True)
class ServerSpec:
    address: Address
    port: int
    users: Tuple[Account, ...] = ()

    @property
    def destination(self) -> Destination:
        return Destination(self.address, self.port)

    def pick_user(self) -> Optional[Account]:
        return random.choice(self.users) if self.users else None


def _account(raw: Any, path: str) -> Account:
    entry = require_object(raw, path)
    return Account(get_str(entry, "user", path), get_str(entry, "pass", path),
                   # protocol.User's level: a uint32 (VMess, Trojan and Shadowsocks take a byte)
                   get_uint(entry, "level", path, maximum=MAX_UINT32), get_str(entry, "email", path))


def _port(entry: Mapping[str, Any], where: str, protocol: str) -> int:
    """4.34 takes port 0 (or none) for a SOCKS or HTTP server; each dial then fails."""
    port = get_uint(entry, "port", where, maximum=MAX_UINT16)
    if port == 0:
        log.warning("%s: %s server port is 0: every dial to it will fail", where, protocol)
    return port


def _server(raw: Any, where: str, protocol: str) -> ServerSpec:
    entry = require_object(raw, where)
    address, port, users = checked(
        lambda: get_server_address(entry, where, f"{protocol} server address is empty"),
        lambda: _port(entry, where, protocol),
        lambda: tuple(gather(get_items(entry, "users", where), _account)))
    return ServerSpec(address, port, users)


def servers_from_json(settings: Mapping[str, Any], path: str, protocol: str
                      ) -> Tuple[ServerSpec, ...]:
    settings = require_object(settings, path)
    servers = gather(get_items(settings, "servers", path),
                     lambda raw, where: _server(raw, where, protocol))
    if not servers:
        raise ConfigError(f"{protocol} outbound has no servers", join_path(path, "servers"),
                          expected="at least one {address, port}")
    return tuple(servers)


class ServerPicker(Generic[S]):
    """Round-robin over an outbound's configured servers, whatever their type (4.34
    ``server_picker.go`` RoundRobinServerPicker): every outbound with a server list."""

    def __init__(self, servers: Sequence[S]):
        self.servers = servers
        self._next = itertools.count()
        self._lock = threading.Lock()

    def pick(self) -> S:
        with self._lock:
            index = next(self._next)
        return self.servers[index % len(self.servers)]


@dataclass(frozen=True)
class ServersConfig:
    """The settings of the HTTP and SOCKS outbounds (infra/conf http.go, socks.go)."""

    servers: Tuple[ServerSpec, ...]

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "",
                  protocol: str = "proxy") -> "ServersConfig":
        return cls(servers_from_json(settings, path, protocol))
