"""The dokodemo-door inbound (v2ray ``proxy/dokodemo/dokodemo.go``).

TCP: no handshake; the connection is dispatched to the destination and relayed as raw bytes.
UDP: the inbound's UDP worker (``app/proxyman/udp_worker.py``) hands over one packet
connection per source; each datagram read from it is one pipe chunk to the destination,
each chunk back is one datagram to the source.

The destination is ``address``:``port`` over the connection's network; with
``followRedirect`` the original destination the worker found (SO_ORIGINAL_DST, the TPROXY
socket's local address, IP_RECVORIGDSTADDR) replaces it, and without either 4.34 refuses
the connection ("unable to get destination").
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Callable

from v2sync.common.errors import RemoteProtocolError
from v2sync.common.net import Destination, Network
from v2sync.common.registry import INBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.features.proxy import ProxyContext
from v2sync.features.routing import Dispatcher
from v2sync.proxy.dokodemo.config import DokodemoConfig
from v2sync.proxy.relay import relay_datagrams_steps, relay_stream_steps
from v2sync.transport.internet.conn import Connection, Handshake

log = logging.getLogger(__name__)


@INBOUNDS.register("dokodemo-door")
class DokodemoInbound:
    config_type = DokodemoConfig

    def __init__(self, settings: DokodemoConfig, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        # Read by the inbound handler: which listeners to open, and whether its workers
        # look up original destinations (4.34 v2ray.go: ReceiveOriginalDestination).
        self.networks = settings.networks
        self.follow_redirect = settings.follow_redirect
        self.policy = ctx.policy.for_level(settings.user_level, settings.timeout)

    def handshake(self, session: Session, conn: Connection,
                  dispatcher: Dispatcher) -> Handshake[Callable[[], object]]:
        """Nothing to read: the whole connection is payload."""
        return partial(self._serve_tcp, session, conn, dispatcher)
        yield  # a generator with no steps (the selector hands it straight to a thread)

    def destination(self, session: Session, network: Network) -> Destination:
        original = session.original_target
        if self.settings.follow_redirect and original is not None:
            return Destination(original.address, original.port, network)
        if self.settings.address is None:
            raise RemoteProtocolError("unable to get destination")
        return Destination(self.settings.address, self.settings.port, network)

    def _serve_tcp(self, session: Session, conn: Connection,
                   dispatcher: Dispatcher) -> Steps[None]:
        """A TCP connection, as steps (``Handoff.serve_steps``): its idle reader parks."""
        dest = self.destination(session, Network.TCP)
        session.user_level = self.settings.user_level
        link = dispatcher.dispatch(session, dest, start_here=True)
        error = yield from relay_stream_steps(self.ctx, session.name(), self.policy, conn, link)
        if error is not None:
            log.debug("%s: connection ends: %s", session.name(), error)

    def process_steps(self, session: Session, conn, dispatcher: Dispatcher) -> Steps[None]:
        """Serve one UDP source's packet connection (the UDP worker's); a TCP connection
        comes through ``handshake`` to ``_serve_tcp``. Steps: an idle source parks."""
        dest = self.destination(session, Network.UDP)
        session.user_level = self.settings.user_level
        error = yield from relay_datagrams_steps(self.ctx, session.name(), self.policy, conn,
                                                 dispatcher.dispatch(session, dest))
        if error is not None:
            log.debug("%s: connection ends: %s", session.name(), error)

