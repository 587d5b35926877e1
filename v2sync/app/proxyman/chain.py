"""``proxySettings``: an outbound whose connections another outbound carries (v2ray
``app/proxyman/outbound/handler.go`` Dial).

4.34 gives the outbound, in place of a dialled socket, a connection made of two pipes whose
other ends are a link handed to the outbound named by ``proxySettings.tag``, its target the
server the first outbound wanted. Only TLS from the first outbound's ``streamSettings`` is
applied on top; its transport (WebSocket, the HTTP header, sockopt) is not. A tag no
outbound has is logged as a warning and the dial goes on as usual.

Here the connection is one end of a ``socketpair``, and the other end is relayed into the
link as an inbound's client is (``relay_stream_steps``): the outbound's protocol, TLS and
parked readers work on it as on any socket. The carrying outbound runs as a task of the
Instance's thread group, as the dispatcher runs one.
"""
from __future__ import annotations

import logging
import socket
from typing import Optional

from v2sync.common.errors import TransportError
from v2sync.common.net import Destination
from v2sync.common.session import Session
from v2sync.proxy.relay import relay_stream_steps
from v2sync.transport.internet.conn import Connection
from v2sync.transport.link import new_link_pair

log = logging.getLogger(__name__)


class ChainDialer:
    """Dials for an outbound through the outbound tagged ``tag`` (found at each dial, as
    4.34's GetHandler: the API may add or remove it meanwhile)."""

    def __init__(self, tag: str, owner: str, outbounds, ctx):
        self.tag = tag
        self.owner = owner  # the carried outbound's tag, for the logs
        self.outbounds = outbounds  # app.proxyman.outbound.OutboundManager
        self.ctx = ctx  # features.proxy.ProxyContext

    def dial(self, target: Destination) -> Optional[Connection]:
        """A connection to ``target`` through the carrying outbound; None when no outbound
        has the tag (4.34 warns and dials directly)."""
        handler = self.outbounds.get(self.tag)
        if handler is None:
            log.warning("failed to get outbound handler with tag: %s", self.tag)
            return None
        session = Session(inbound_tag=f"{self.owner or 'out'}-via-{self.tag}", source=target,
                          target=target, outbound_tag=self.tag)
        log.debug("%s: proxying to %s for dest %s", session.name(), self.tag, target)
        try:
            ours, theirs = socket.socketpair()
        except OSError as e:
            raise TransportError(f"failed to dial {target} through {self.tag}: {e}") from e
        self._carry(session, handler, Connection(theirs, target))
        return Connection(ours, target)

    def _carry(self, session: Session, handler, conn: Connection) -> None:
        """The carrying outbound on one end of a link, the socketpair's far end on the
        other; both as tasks of the thread group."""
        policy = self.ctx.policy.for_level(0)
        ends, outbound_side = new_link_pair(self.ctx.policy.pipe_limit(policy), session.name())
        threads = self.ctx.threads
        try:
            threads.spawn_steps(f"out-{session.name()}", handler.dispatch_steps(session,
                                                                                outbound_side))
        except RuntimeError as e:
            conn.close()
            raise TransportError(f"cannot start the outbound {self.tag}") from e
        try:
            threads.spawn_steps(f"chain-{session.name()}", self._relay(session, conn, ends))
        except RuntimeError as e:
            conn.close()
            ends.interrupt()
            raise TransportError(f"cannot relay to the outbound {self.tag}") from e

    def _relay(self, session: Session, conn: Connection, link):
        policy = self.ctx.policy.for_level(0)
        try:
            error = yield from relay_stream_steps(self.ctx, session.name(), policy, conn, link)
            if error is not None:
                log.debug("%s: relay through %s ended: %s", session.name(), self.tag, error)
        finally:
            conn.close()
