"""The Shadowsocks outbound (v2ray ``proxy/shadowsocks/client.go``).

Servers are used round-robin. TCP: the salt and the target go out at once, in their own
chunk, as 4.34 flushes them (``SetBuffered(false)`` right after ``WriteTCPRequest``); the
body follows. UDP: a UDP socket connected to the server, one datagram per link chunk, each
carrying the target; answers are decoded and their payloads handed back.
"""
from __future__ import annotations

import logging
from typing import Optional

from v2sync.common.errors import ProtocolError, TransportError
from v2sync.common.net import Destination, Network
from v2sync.common.protocol.server_spec import ServerPicker
from v2sync.common.registry import OUTBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.features.proxy import ProxyContext
from v2sync.proxy.relay import link_pause, relay_socket_datagrams_steps, setup_aborted_with
from v2sync.proxy.shadowsocks.config import ShadowsocksClientConfig, ShadowsocksServer
from v2sync.proxy.shadowsocks.encoding import (StreamReader, decode_packet, encode_packet,
                                               encode_request)
from v2sync.proxy.shadowsocks.inbound import relay_encrypted
from v2sync.transport.internet.counting import adder
from v2sync.transport.internet.dialer import candidates, dial_server
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.internet.udp import MAX_DATAGRAM, dial_udp
from v2sync.transport.link import Link

log = logging.getLogger(__name__)

DIAL_ATTEMPTS = 5  # client.go: retry.ExponentialBackoff(5, 100)
DIAL_STEP = 0.1


@OUTBOUNDS.register("shadowsocks")
class ShadowsocksOutbound:
    config_type = ShadowsocksClientConfig
    starts_in_caller = True  # OutboundHandler.starts_here

    def __init__(self, settings: ShadowsocksClientConfig, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.client = StreamClient.for_handler(handler_config)
        self.picker: ServerPicker[ShadowsocksServer] = ServerPicker(settings.servers)

    def process_steps(self, session: Session, link: Link) -> Steps[None]:
        """``process`` as steps: a TCP relay's idle upstream reader parks."""
        target = session.destination()
        if target.network is Network.UDP:
            server = self.picker.pick()
            yield from self._process_udp(session, server, target, link,
                                         self.ctx.policy.for_level(server.user.level))
            return
        # Each try takes the next server, as client.go calls PickServer inside its retry.
        server, conn = dial_server(self.picker.pick, DIAL_ATTEMPTS, DIAL_STEP, self.client,
                                   link_pause(link))
        policy = self.ctx.policy.for_level(server.user.level)
        try:
            account = server.user.account
            writer, head = encode_request(account, target.address, target.port)
            with setup_aborted_with(link, conn):  # this write may finish a TLS or WS handshake
                conn.write(head)
            error = yield from relay_encrypted(self.ctx, session.name(), policy, conn, link,
                                               StreamReader(account), writer, client=True)
            if error is not None:
                raise TransportError(f"shadowsocks relay ended: {error}") from error
        finally:
            conn.close()

    def _process_udp(self, session: Session, server: ShadowsocksServer, target: Destination,
                     link: Link, policy) -> Steps[None]:
        """Each datagram sealed with its target's address to the server; both directions
        park while quiet (``relay_socket_datagrams_steps``). The outbound's counters take
        each datagram, as 4.34's counting connection does."""
        dest = Destination(server.address, server.port, Network.UDP)
        sock = (self.client.chained_datagrams(dest)
                or dial_udp(candidates(dest)[0], self.client.source, self.client.sockopt))
        account = server.user.account
        uplink, downlink = (adder(counter) for counter in self.client.counters)
        name = session.name()

        def send(chunk: bytes) -> bool:
            try:
                uplink(sock.send(encode_packet(account, target.address, target.port, chunk)))
            except ProtocolError as e:  # too large for a 4.34 server's 2 KiB read
                log.info("%s: datagram dropped: %s", name, e)
            except OSError as e:  # ICMP unreachable from an earlier send
                log.debug("%s: udp send to %s failed: %s", name, dest, e)
            return True

        def receive(data: bytes) -> Optional[bytes]:
            downlink(len(data))
            try:
                return decode_packet(account, data)[2]
            except ProtocolError as e:
                # 4.34's UDPReader ends the whole link here; one bad datagram is dropped.
                log.debug("%s: bad datagram from %s dropped: %s", name, dest, e)
                return None

        try:
            yield from relay_socket_datagrams_steps(self.ctx, name, policy, sock, link,
                                                    MAX_DATAGRAM, send, receive)
        finally:
            sock.close()
