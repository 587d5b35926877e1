"""dokodemo-door settings (v2ray ``infra/conf/dokodemo.go``, ``common.go::NetworkList``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from v2sync.common.errors import ConfigError, join_path
from v2sync.common.net import Address, Network
from v2sync.infra.conf.fields import (MAX_UINT16, get_bool, get_optional_uint, get_str,
                                      get_uint, require_object)

NETWORK_NAMES = {"tcp": Network.TCP, "udp": Network.UDP}
NETWORK_EXPECTED = 'expected "tcp", "udp", "tcp,udp" or an array of them'


@dataclass(frozen=True)
class DokodemoConfig:
    address: Optional[Address] = None  # None: only followRedirect can name a destination
    port: int = 0
    networks: Tuple[Network, ...] = (Network.TCP,)
    follow_redirect: bool = False
    user_level: int = 0
    timeout: Optional[int] = None  # deprecated; overrides connIdle at level 0

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "DokodemoConfig":
        settings = require_object(settings, path)
        address = get_str(settings, "address", path)
        return cls(
            address=Address.parse(address) if address else None,
            port=get_uint(settings, "port", path, maximum=MAX_UINT16),
            networks=parse_network_list(settings.get("network"), join_path(path, "network")),
            follow_redirect=get_bool(settings, "followRedirect", path),
            user_level=get_uint(settings, "userLevel", path),
            timeout=get_optional_uint(settings, "timeout", path),
        )


def parse_network_list(value: Any, path: str) -> Tuple[Network, ...]:
    """``NetworkList``: absent means TCP; an array or a comma-separated string.

    4.34 turns an unknown name (``"tcp, udp"``: spaces are not trimmed) into a network that
    opens nothing; here it is refused by name. An empty list is refused as 4.34's
    ``Door.Init`` refuses it ("no network specified").
    """
    if value is None:
        return (Network.TCP,)
    if isinstance(value, str):
        names = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        names = list(value)
    else:
        raise ConfigError(f"invalid network list {value!r}", path, expected=NETWORK_EXPECTED)
    if not names:
        raise ConfigError("no network specified", path, expected=NETWORK_EXPECTED)
    networks = []
    for name in names:
        network = NETWORK_NAMES.get(name.lower())
        if network is None:
            raise ConfigError(f"unknown network {name!r}", path, expected=NETWORK_EXPECTED)
        if network not in networks:
            networks.append(network)
    return tuple(networks)
