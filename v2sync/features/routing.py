"""Routing and dispatch interfaces (v2ray ``features/routing``)."""
from __future__ import annotations

from typing import Optional, Protocol

from v2sync.common.net import Destination
from v2sync.common.session import Session
from v2sync.transport.link import Link


class Router(Protocol):
    """Picks an outbound tag for a session; None means "the default outbound"."""

    def pick_route(self, session: Session) -> Optional[str]: ...


class Dispatcher(Protocol):
    """Connects an inbound's session to an outbound and returns the inbound's end of the link."""

    def dispatch(self, session: Session, dest: Destination) -> Link: ...
