"""A link: the two pipes of one proxied connection (v2ray ``transport/link.go``).

The dispatcher makes an *uplink* pipe (client -> target) and a *downlink* pipe (target ->
client). The inbound holds ``Link(reader=downlink, writer=uplink)``; the outbound holds the
mirror image ``Link(reader=uplink, writer=downlink)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from v2sync.transport.pipe import DEFAULT_LIMIT, CountingPipe, Pipe


@dataclass(frozen=True)
class Link:
    reader: Pipe
    writer: Pipe

    def interrupt(self) -> None:
        """Abort both directions: used when either side fails."""
        self.reader.interrupt()
        self.writer.interrupt()


def new_link_pair(limit: int = DEFAULT_LIMIT, name: str = "conn", uplink_counter=None,
                  downlink_counter=None) -> Tuple[Link, Link]:
    """Return ``(inbound_side, outbound_side)`` sharing one uplink and one downlink pipe;
    a pipe given a counter (a user's traffic, ``app.stats``) counts what is written to it."""
    uplink = _pipe(limit, f"{name}-uplink", uplink_counter)
    downlink = _pipe(limit, f"{name}-downlink", downlink_counter)
    return Link(reader=downlink, writer=uplink), Link(reader=uplink, writer=downlink)


def _pipe(limit: int, name: str, counter: Optional[object]) -> Pipe:
    return Pipe(limit, name) if counter is None else CountingPipe(counter, limit, name)
