"""Dial a destination by name or IP, with 4.34's retry schedule (``common/retry``).

Names are resolved once per attempt (system resolver, filtered by ``domainStrategy``) and
each answer is tried in turn; the first that connects wins.
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional, Sequence

from v2sync.common.errors import TransportError
from v2sync.common.net import Address, Destination
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.internet.resolve import resolve
from v2sync.transport.internet import tcp as _tcp  # noqa: F401  (registers "tcp")

DIAL_TIMEOUT = 16.0  # v2ray's system dialer: net.Dialer{Timeout: 16 s}


# Resolves a name to addresses: the built-in DNS for UseIP*, the system resolver for AsIs.
Lookup = Callable[[str], Sequence[Address]]


def candidates(dest: Destination, strategy: str = "AsIs",
               lookup: Optional[Lookup] = None) -> List[Destination]:
    if dest.address.is_ip:
        return [dest]
    if lookup is not None:
        addresses = list(lookup(dest.address.value))
    else:
        addresses = resolve(dest.address.value, strategy, dest.port)
    return [Destination(a, dest.port, dest.network) for a in addresses]


def dial_once(dest: Destination, client: Optional[StreamClient] = None, strategy: str = "AsIs",
              lookup: Optional[Lookup] = None) -> Connection:
    """Through ``client``'s transport (None: plain TCP); each resolved address is tried."""
    client = client or StreamClient()
    if not client.uses_address:
        return client.dial(dest, dest, DIAL_TIMEOUT)
    last: Optional[TransportError] = None
    for candidate in candidates(dest, strategy, lookup):
        try:
            return client.dial(dest, candidate, DIAL_TIMEOUT)
        except TransportError as e:
            last = e
    raise last or TransportError(f"no address to dial for {dest}")


def dial_with_retry(dest: Destination, attempts: int, step: float,
                    client: Optional[StreamClient] = None, strategy: str = "AsIs",
                    lookup: Optional[Lookup] = None) -> Connection:
    """``attempts`` tries on 4.34's schedule (``common/retry``'s ``ExponentialBackoff``,
    which despite its name waits 0, ``step``, 2 ``step``, ... after each failure, the last
    one included): five tries with a 0.1 s step fail after 1 s of waiting, 0.2 s after 2 s."""
    last: Optional[TransportError] = None
    for attempt in range(attempts):
        try:
            return dial_once(dest, client, strategy, lookup)
        except TransportError as e:
            last = e
            time.sleep(attempt * step)
    raise TransportError(f"failed to open connection to {dest}: {last}")
