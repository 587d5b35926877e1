"""Typed field readers for the protocols' ``config.py`` converters.

Settings reaching ``from_json`` were normally validated already, but converters are also
called directly (tests, the API later), so each read checks its type and raises a
ConfigError located at ``path.key``, with Go's integer widths as bounds.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple

from v2sync.common.errors import ConfigError, join_path
from v2sync.common.net import Address, Network, go_address

MAX_UINT32 = 2**32 - 1
MAX_UINT16 = 2**16 - 1
MAX_UINT8 = 2**8 - 1
# common.go NetworkList: the networks dokodemo-door and the Shadowsocks server take.
NETWORK_NAMES = {"tcp": Network.TCP, "udp": Network.UDP}
NETWORK_EXPECTED = 'expected "tcp", "udp", "tcp,udp" or an array of them'


def require_object(value: Any, path: str) -> Mapping[str, Any]:
    """``settings`` itself: absent (None) reads as ``{}``, as v2ray.go does."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{type(value).__name__} is not an object", path,
                          expected="expected an object")
    return value


def get_bool(settings: Mapping[str, Any], key: str, path: str, default: bool = False) -> bool:
    value = settings.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{value!r} is not a boolean", join_path(path, key),
                          expected="expected true or false")
    return value


def get_uint(settings: Mapping[str, Any], key: str, path: str, default: int = 0,
             maximum: int = MAX_UINT32) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ConfigError(f"invalid value {value!r}", join_path(path, key),
                          expected=f"expected an integer 0-{maximum}")
    return value


def get_optional_uint(settings: Mapping[str, Any], key: str, path: str,
                      maximum: int = MAX_UINT32) -> Optional[int]:
    if settings.get(key) is None:
        return None
    return get_uint(settings, key, path, maximum=maximum)


def get_str(settings: Mapping[str, Any], key: str, path: str, default: str = "") -> str:
    value = settings.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{value!r} is not a string", join_path(path, key),
                          expected="expected a string")
    return value


def get_accounts(settings: Mapping[str, Any], key: str, path: str) -> Mapping[str, str]:
    """``accounts: [{user, pass}]`` as a read-only user -> password map (later entries win,
    as with the Go map the 4.34 builders fill)."""
    items = settings.get(key) or []
    where = join_path(path, key)
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{type(items).__name__} is not an array", where,
                          expected="expected an array of {user, pass}")
    accounts: Dict[str, str] = {}
    for i, item in enumerate(items):
        item_path = f"{where}[{i}]"
        entry = require_object(item, item_path)
        accounts[get_str(entry, "user", item_path)] = get_str(entry, "pass", item_path)
    return MappingProxyType(accounts)


def get_items(settings: Mapping[str, Any], key: str, path: str):
    """``settings[key]`` as (item, its JSON path) pairs; absent or null reads as empty."""
    items = settings.get(key) or []
    where = join_path(path, key)
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{type(items).__name__} is not an array", where,
                          expected="expected an array")
    return [(item, f"{where}[{i}]") for i, item in enumerate(items)]


def get_server_address(entry: Mapping[str, Any], path: str, empty: str,
                       expected: str = "") -> Address:
    """A server's ``address``; ``empty`` is the protocol's own 4.34 message for a missing one."""
    address = get_str(entry, "address", path)
    if not address and "address" in entry:  # 4.34 takes "" and fails at each dial
        raise ConfigError("the server address is empty", join_path(path, "address"),
                          expected=expected or "an IP address or a domain")
    if not address:
        raise ConfigError(empty, join_path(path, "address"), expected=expected)
    return go_address(address)


def get_server_port(entry: Mapping[str, Any], path: str, zero: str,
                    expected: str = "1-65535") -> int:
    """A server's ``port``; ``zero`` is the protocol's own 4.34 message for port 0."""
    port = get_uint(entry, "port", path, maximum=MAX_UINT16)
    if port == 0:
        raise ConfigError(zero, join_path(path, "port"), expected=expected)
    return port


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
