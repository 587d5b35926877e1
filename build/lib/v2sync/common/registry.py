"""Name -> implementation registries (v2ray ``common/type.go::RegisterConfig``).

Each protocol and transport registers itself under its JSON name with a decorator. A second
registration under the same name is a programming error and is refused, so two packages can
never silently shadow each other. ``distro.py`` imports every package that registers.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, Generic, List, TypeVar

from v2sync.common.errors import ConfigError, V2SyncError

T = TypeVar("T")


class DuplicateRegistration(V2SyncError):
    """Raised when a name is registered twice in one registry."""


class Registry(Generic[T]):
    """A named registry; ``kind`` appears in error messages ("inbound protocol 'x' ...")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._lock = threading.Lock()

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            for key in (name, *aliases):
                self.add(key, item)
            return item

        return decorator

    def add(self, name: str, item: T) -> None:
        with self._lock:
            if name in self._items:
                raise DuplicateRegistration(f"{self.kind} {name!r} is already registered")
            self._items[name] = item

    def get(self, name: str, path: str = "") -> T:
        """The implementation for ``name``, or a ConfigError naming what is supported."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"{self.kind} {name!r} is not supported by v2sync",
                path=path,
                expected="supported: " + ", ".join(self.names()),
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> List[str]:
        return sorted(self._items)


INBOUNDS: Registry = Registry("inbound protocol")
OUTBOUNDS: Registry = Registry("outbound protocol")
# Stream transports by canonical network name (transport/internet/hub.Transport instances).
TRANSPORTS: Registry = Registry("streamSettings.network")
