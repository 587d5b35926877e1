"""A link: the two pipes of one proxied connection (v2ray ``transport/link.go``).

The dispatcher makes an *uplink* pipe (client -> target) and a *downlink* pipe (target ->
client). The inbound holds ``Link(reader=downlink, writer=uplink)``; the outbound holds the
mirror image ``Link(reader=uplink, writer=downlink)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from v2sync.transport.pipe import DEFAULT_LIMIT, Pipe


@dataclass(frozen=True)
class Link:
    reader: Pipe
    writer: Pipe

    def interrupt(self) -> None:
        """Abort both directions: used when either side fails."""
        self.reader.interrupt()
        self.writer.interrupt()


def new_link_pair(limit: int = DEFAULT_LIMIT, name: str = "conn") -> Tuple[Link, Link]:
    """Return ``(inbound_side, outbound_side)`` sharing one uplink and one downlink pipe."""
    uplink = Pipe(limit, f"{name}-uplink")
    downlink = Pipe(limit, f"{name}-downlink")
    return Link(reader=downlink, writer=uplink), Link(reader=uplink, writer=downlink)
