"""Routing and dispatch interfaces (v2ray ``features/routing``)."""
from __future__ import annotations

from typing import Optional, Protocol, Tuple

from v2sync.common.net import Address, Destination
from v2sync.common.session import Session
from v2sync.transport.link import Link


class Decision(Protocol):
    """A routing decision: the outbound tag (None: the default outbound) and the addresses
    the router resolved the target's name to, if it did (the dial reuses them)."""

    tag: Optional[str]
    resolved: Optional[Tuple[Address, ...]]


class Router(Protocol):
    """Routes a session (implemented by ``app.router.Router``)."""

    def decide(self, session: Session) -> Decision: ...


class Dispatcher(Protocol):
    """Connects an inbound's session to an outbound and returns the inbound's end of the link."""

    def dispatch(self, session: Session, dest: Destination, early: bytes = b"",
                 start_here: bool = False) -> Link:
        """``early``: stream bytes the client sent with its request, already decoded; they
        are in the link before the outbound starts. ``start_here``: the caller's thread
        serves this one connection (an inbound's, not a mux reader's), so the outbound's
        start may run in it (``ThreadGroup.start_here``)."""
        ...
