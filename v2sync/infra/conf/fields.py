"""Typed field readers for the protocols' ``config.py`` converters.

Settings reaching ``from_json`` were normally validated already, but converters are also
called directly (tests, the API later), so each read checks its type and raises a
ConfigError located at ``path.key``, with Go's integer widths as bounds.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, TypeVar

from v2sync.common.errors import ConfigError, ConfigErrors, join_path
from v2sync.common.net import Address, Network, go_address

MAX_UINT32 = 2**32 - 1
MAX_UINT16 = 2**16 - 1
MAX_UINT8 = 2**8 - 1
# common.go NetworkList: the networks dokodemo-door and the Shadowsocks server take.
NETWORK_NAMES = {"tcp": Network.TCP, "udp": Network.UDP}
NETWORK_EXPECTED = 'expected "tcp", "udp", "tcp,udp" or an array of them'
T = TypeVar("T")


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


SERVER_ADDRESS_EXPECTED = "expected a host name or IP"


def gather(pairs: Iterable[Tuple[Any, str]], build: Callable[[Any, str], T]) -> List[T]:
    """``build(item, path)`` for each pair; the errors of every item are raised together,
    so a list's entries are all checked in one pass."""
    built: List[T] = []
    errors: List[ConfigError] = []
    for item, where in pairs:
        try:
            built.append(build(item, where))
        except ConfigErrors as e:
            errors.extend(e.errors)
        except ConfigError as e:
            errors.append(e)
    if errors:
        raise ConfigErrors(errors)
    return built


def checked(*reads: Callable[[], Any]) -> Tuple[Any, ...]:
    """The values of independent field reads, their errors raised together: a server entry
    with an empty address and an empty id reports both."""
    return tuple(gather(((read, "") for read in reads), lambda read, _: read()))


def get_server_address(entry: Mapping[str, Any], path: str, missing: str) -> Address:
    """A server's ``address``; ``missing`` is the protocol's own 4.34 message for no key.

    An empty (or all-space) address is refused: it is the placeholder of v2fly's example
    configs, and 4.34, which takes it, dials this machine with it (Go reads an empty host as
    the local system).
    """
    address = get_str(entry, "address", path)
    if entry.get("address") is None:  # null leaves Go's pointer nil, as no key does
        raise ConfigError(missing, join_path(path, "address"), expected=SERVER_ADDRESS_EXPECTED)
    if not address.strip():
        raise ConfigError("the server address is empty (4.34 would dial this machine)",
                          join_path(path, "address"), expected=SERVER_ADDRESS_EXPECTED)
    return go_address(address)


def get_server_port(entry: Mapping[str, Any], path: str, zero: str,
                    expected: str = "1-65535") -> int:
    """A server's ``port``; ``zero`` is the protocol's own 4.34 message for port 0."""
    port = get_uint(entry, "port", path, maximum=MAX_UINT16)
    if port == 0:
        raise ConfigError(zero, join_path(path, "port"), expected=expected)
    return port


def parse_network_list(value: Any, path: str, also: Tuple[Network, ...] = ()
                       ) -> Tuple[Network, ...]:
    """``NetworkList``: absent means TCP; an array or a comma-separated string; ``also``
    is appended (a Shadowsocks server's ``udp: true``).

    As 4.34, a name other than tcp or udp (``" udp"`` in ``"tcp, udp"``: spaces are not
    trimmed) opens nothing, so it is dropped here; the schema warns about each one. A list
    with nothing left to serve is refused, where 4.34 starts an inbound that opens no
    port; an empty list as 4.34's ``Door.Init`` refuses it ("no network specified").
    """
    if value is None:
        return tuple(dict.fromkeys((Network.TCP, *also)))
    if isinstance(value, str):
        names = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        names = list(value)
    else:
        raise ConfigError(f"invalid network list {value!r}", path, expected=NETWORK_EXPECTED)
    if not names:
        raise ConfigError("no network specified", path, expected=NETWORK_EXPECTED)
    known = [NETWORK_NAMES[name.lower()] for name in names if name.lower() in NETWORK_NAMES]
    known += also
    if not known:
        raise ConfigError(f"no network to serve in {value!r} (4.34 would open no port)", path,
                          expected=NETWORK_EXPECTED)
    return tuple(dict.fromkeys(known))
