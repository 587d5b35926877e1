"""What is known about one proxied connection (v2ray ``common/session``).

The inbound fills in where it came from and where it wants to go; the dispatcher adds what
routing needs (sniffed protocol) and which outbound took it, for the access log.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from v2sync.common.errors import TransportError
from v2sync.common.net import Address, Destination

_ids = itertools.count(1)


def new_session_id() -> int:
    return next(_ids)


@dataclass
class Session:
    inbound_tag: str
    source: Destination
    target: Optional[Destination] = None
    user_email: str = ""
    # SOCKS and HTTP name their user for routing and stats, but 4.34's access lines for them
    # carry no "email:" (socks/server.go, http/server.go); VMess's do.
    email_in_access_log: bool = True
    # How 4.34's access line names the source: most inbounds print the connection's peer
    # (``127.0.0.1:5000``); SOCKS, the UDP sessions and Mux.cool sub-connections print their
    # inbound's source, network included (``tcp:127.0.0.1:5000``).
    source_with_network: bool = False
    # What the access line names as the target when it is not the destination: the HTTP
    # inbound prints the request's URL (``http://example.com/``, ``//example.com:443``).
    access_to: str = ""
    user_level: int = 0
    protocol: str = ""
    outbound_tag: str = ""
    sniffing: Any = None  # the inbound's SniffingConfig, when it has one
    # Addresses the router resolved the target's name to; the dial uses the same answer.
    resolved: Tuple[Address, ...] = ()
    # Where the client addressed its traffic before iptables REDIRECT/TPROXY sent it to us
    # (v2ray's session.Outbound.Target, set by the inbound worker); dokodemo-door's
    # followRedirect goes there.
    original_target: Optional[Destination] = None
    # The built-in DNS's own queries (app/dns/routed.py): routed, but no access line, as
    # 4.34 logs none for them.
    internal: bool = False
    id: int = field(default_factory=new_session_id)

    def destination(self) -> Destination:
        """``target``, which dispatch sets before any outbound or sniffer sees the session."""
        if self.target is None:
            raise TransportError(f"{self.name()}: no destination")
        return self.target

    def name(self) -> str:
        return f"{self.inbound_tag or 'in'}#{self.id}"
