"""The counter manager (v2ray ``app/stats/stats.go``, ``counter.go``).

A counter is shared by every connection of its inbound, outbound or user, so each relay
thread adds under the counter's own lock; an add is one lock round per chunk relayed (chunks
are 512 bytes to 1 MiB), which is what keeps counting under the 3% budget.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict, List, Optional, Tuple

from v2sync.common.errors import V2SyncError

log = logging.getLogger(__name__)

SEPARATOR = ">>>"
UPLINK = "uplink"
DOWNLINK = "downlink"
# Counter names are made from tags and emails, which a config bounds; users added through the
# API could add more, so the table has a ceiling rather than growing without end.
MAX_COUNTERS = 100_000


class Counter:
    """An int64 that many threads add to (v2ray ``stats.Counter``)."""

    __slots__ = ("_value", "_lock")

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def add(self, delta: int) -> None:
        with self._lock:
            self._value += delta

    def value(self) -> int:
        return self._value

    def set(self, value: int) -> int:
        """Store ``value``; returns the value before (GetStats with reset answers that)."""
        with self._lock:
            old, self._value = self._value, value
        return old


def counter_name(kind: str, name: str, direction: str) -> str:
    """``inbound>>>TAG>>>traffic>>>uplink`` and the like (proxyman, dispatcher in 4.34)."""
    return SEPARATOR.join((kind, name, "traffic", direction))


class StatsManager:
    """Counters by name; registering a name twice is an error, as in 4.34."""

    def __init__(self) -> None:
        self._counters: Dict[str, Counter] = {}
        self._lock = threading.Lock()
        self._full_told = False

    def register(self, name: str) -> Counter:
        with self._lock:
            if name in self._counters:
                raise V2SyncError(f"Counter {name} already registered.")
            return self._add(name)

    def get_or_register(self, name: str) -> Counter:
        counter = self._counters.get(name)
        if counter is not None:
            return counter
        with self._lock:
            counter = self._counters.get(name)
            if counter is None:
                counter = self._uncounted(name) if self._full() else self._add(name)
            return counter

    def _full(self) -> bool:
        return len(self._counters) >= MAX_COUNTERS

    def _uncounted(self, name: str) -> Counter:
        """Past the cap, a counter nobody can query: the connection is served, uncounted.
        Refusing it (4.34 has no cap) would lock out every user added after the cap, and
        counters are never deleted, so a panel that adds and removes users reaches it in
        time (found by a review)."""
        if not self._full_told:
            self._full_told = True
            log.warning("stats: %d counters; %s and later new names are not counted",
                        MAX_COUNTERS, name)
        return Counter()

    def _add(self, name: str) -> Counter:
        if len(self._counters) >= MAX_COUNTERS:
            raise V2SyncError(f"more than {MAX_COUNTERS} counters")
        counter = self._counters[name] = Counter()
        return counter

    def get(self, name: str) -> Optional[Counter]:
        return self._counters.get(name)

    def query(self, pattern: str = "", reset: bool = False) -> List[Tuple[str, int]]:
        """Every counter whose name contains ``pattern`` ("" = all), with its value (the
        value before the reset when ``reset``), as QueryStats answers."""
        with self._lock:
            items = list(self._counters.items())
        return [(name, counter.set(0) if reset else counter.value())
                for name, counter in items if pattern in name]

    def traffic_pair(self, kind: str, name: str, uplink: bool, downlink: bool
                     ) -> Tuple[Optional[Counter], Optional[Counter]]:
        """The (uplink, downlink) counters of an inbound, outbound or user, each only when
        its policy switch is on; shared with any earlier holder of the same name."""
        up = self.get_or_register(counter_name(kind, name, UPLINK)) if uplink else None
        down = self.get_or_register(counter_name(kind, name, DOWNLINK)) if downlink else None
        return up, down
