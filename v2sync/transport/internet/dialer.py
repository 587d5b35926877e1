"""Dial a destination by name or IP, with 4.34's retry schedule (``common/retry``).

Names are resolved once per attempt (system resolver, filtered by ``domainStrategy``) and
each answer is tried in turn; the first that connects wins.
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional, Protocol, Sequence, Tuple, Type, TypeVar

from v2sync.common.errors import NoServerReachable, PipeInterrupted, TransportError
from v2sync.common.net import Address, Destination
from v2sync.common.task import outside_slot
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.internet.resolve import resolve
from v2sync.transport.internet import tcp as _tcp  # noqa: F401  (registers "tcp")

DIAL_TIMEOUT = 16.0  # v2ray's system dialer: net.Dialer{Timeout: 16 s}
S = TypeVar("S", bound="Server")
T = TypeVar("T")
# Waits between tries: returns True if told to give up meanwhile (``proxy.relay.link_pause``:
# the link was interrupted, by a shutdown or the other side failing).
Pause = Callable[[float], bool]


def _sleep(seconds: float) -> bool:
    outside_slot(time.sleep, seconds)  # a dial's wait holds no run slot (common/task.py)
    return False


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
              lookup: Optional[Lookup] = None, timeout: float = DIAL_TIMEOUT) -> Connection:
    """Through ``client``'s transport (None: plain TCP); each resolved address is tried."""
    client = client or StreamClient()
    chained = client.dial_chained(dest, timeout)
    if chained is not None:
        return chained
    if not client.uses_address:
        return client.dial(dest, dest, timeout)
    last: Optional[TransportError] = None
    for candidate in candidates(dest, strategy, lookup):
        try:
            return client.dial(dest, candidate, timeout)
        except TransportError as e:
            last = e
    raise last or TransportError(f"no address to dial for {dest}")


def with_retry(attempts: int, step: float, attempt: Callable[[], T], what: str,
               failure: Type[TransportError] = TransportError, pause: Pause = _sleep) -> T:
    """``attempt()`` up to ``attempts`` times on 4.34's schedule (``common/retry``'s
    ``ExponentialBackoff``, which despite its name waits 0, ``step``, 2 ``step``, ... after
    each failure, the last one included): five tries with a 0.1 s step fail after 1 s of
    waiting, with 0.2 s after 2 s. Only a TransportError is tried again; the last one is
    raised as ``failure``; if ``pause`` says to give up, a PipeInterrupted at once."""
    last: Optional[TransportError] = None
    for n in range(attempts):
        try:
            return attempt()
        except TransportError as e:
            last = e
            if pause(n * step):
                raise PipeInterrupted(f"{what}: interrupted after {last}") from e
    raise failure(f"{what}: {last}")


def dial_with_retry(dest: Destination, attempts: int, step: float,
                    client: Optional[StreamClient] = None, strategy: str = "AsIs",
                    lookup: Optional[Lookup] = None, pause: Pause = _sleep) -> Connection:
    """``dial_once`` with retries (``with_retry``)."""
    return with_retry(attempts, step, lambda: dial_once(dest, client, strategy, lookup),
                      f"failed to open connection to {dest}", pause=pause)


class Server(Protocol):
    """What ``dial_server`` needs of an outbound's server entry (each protocol's has more)."""

    @property
    def address(self) -> Address: ...

    @property
    def port(self) -> int: ...


def dial_server(pick: Callable[[], S], attempts: int, step: float,
                client: Optional[StreamClient] = None, pause: Pause = _sleep,
                failure: Type[TransportError] = NoServerReachable) -> Tuple[S, Connection]:
    """Dial one of an outbound's servers: each try takes the next (``pick``), as 4.34's
    outbounds call ``PickServer`` inside their retry, so a server that is down costs a
    try and the next one serves the connection. ``failure``: what giving up raises
    (NoServerReachable is logged at Warning, as most of 4.34's outbounds log it)."""
    def once() -> Tuple[S, Connection]:
        server = pick()
        return server, dial_once(Destination(server.address, server.port), client)
    return with_retry(attempts, step, once, "failed to reach any server", failure, pause)
