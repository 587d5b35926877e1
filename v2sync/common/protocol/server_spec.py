"""Servers an outbound connects to, with their accounts (v2ray ``common/protocol/server_spec.go``,
``server_picker.go``), as the HTTP and SOCKS outbounds configure them:
``servers[{address, port, users[{user, pass, level, email}]}]``.

Servers are used round-robin; a server's user is picked at random per connection (4.34
``ServerSpec.PickUser``); a server without users connects without credentials.
"""
from __future__ import annotations

import itertools
import random
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from v2sync.common.errors import ConfigError, join_path
from v2sync.common.net import Address, Destination
from v2sync.infra.conf.fields import (MAX_UINT8, MAX_UINT16, get_str, get_uint,
                                      require_object)


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


def _array(settings: Mapping[str, Any], key: str, path: str) -> list:
    items = settings.get(key) or []
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{type(items).__name__} is not an array", join_path(path, key),
                          expected="expected an array")
    return list(items)


def _account(raw: Any, path: str) -> Account:
    entry = require_object(raw, path)
    return Account(get_str(entry, "user", path), get_str(entry, "pass", path),
                   get_uint(entry, "level", path, maximum=MAX_UINT8), get_str(entry, "email", path))


def servers_from_json(settings: Mapping[str, Any], path: str, protocol: str
                      ) -> Tuple[ServerSpec, ...]:
    settings = require_object(settings, path)
    servers = []
    for i, raw in enumerate(_array(settings, "servers", path)):
        where = f"{join_path(path, 'servers')}[{i}]"
        entry = require_object(raw, where)
        address = get_str(entry, "address", where)
        if not address:
            raise ConfigError(f"{protocol} server address is empty", join_path(where, "address"),
                              expected="a host name or IP")
        port = get_uint(entry, "port", where, maximum=MAX_UINT16)
        if port == 0:
            raise ConfigError(f"{protocol} server port is 0", join_path(where, "port"),
                              expected="1-65535")
        users = tuple(_account(u, f"{join_path(where, 'users')}[{j}]")
                      for j, u in enumerate(_array(entry, "users", where)))
        servers.append(ServerSpec(Address.parse(address), port, users))
    if not servers:
        raise ConfigError(f"{protocol} outbound has no servers", join_path(path, "servers"),
                          expected="at least one {address, port}")
    return tuple(servers)


class ServerPicker:
    """Round-robin over the configured servers (server_picker.go RoundRobinServerPicker)."""

    def __init__(self, servers: Tuple[ServerSpec, ...]):
        self.servers = servers
        self._next = itertools.count()
        self._lock = threading.Lock()

    def pick(self) -> ServerSpec:
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
