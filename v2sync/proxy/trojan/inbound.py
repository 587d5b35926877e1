"""The Trojan inbound (v2ray ``proxy/trojan/server.go``).

The handshake and fallbacks are ``proxy.keyed``'s. TCP is the raw stream both ways. UDP
(command 3): every packet names its own target, so packets go through a datagram session
table (one dispatched link per target, as 4.34's ``udp.Dispatcher``), and answers come back
framed with the address they came from.
"""
from __future__ import annotations

import threading
from typing import Iterator, Union

from v2sync.app.dispatcher.udp import UdpSessionTable
from v2sync.common.errors import TransportError
from v2sync.common.net import Destination
from v2sync.common.protocol.packets import (PacketStream, encode_trojan_packets,
                                            parse_trojan_packet)
from v2sync.common.registry import INBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps, Wait
from v2sync.features.routing import Dispatcher
from v2sync.proxy.keyed import KeyedInbound
from v2sync.proxy.trojan.config import TrojanInboundConfig, parse_user
from v2sync.proxy.trojan.encoding import (PROBE_SIZE, Command, RequestHeader,
                                          parse_request_header, peek_key)
from v2sync.transport.copy import parkable_reads
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.readiness import ReadWaiter


@INBOUNDS.register("trojan")
class TrojanInbound(KeyedInbound):
    config_type = TrojanInboundConfig
    label = "trojan"
    probe_size = PROBE_SIZE
    first_read_decides = True
    logs_fallbacks = True
    # Its server returns a failed first read (a TLS handshake, a PROXY header) without an
    # access line (trojan/server.go: "failed to read first request").
    logs_transport_failures = False

    @staticmethod
    def parse_user_entry(raw, path: str):
        return parse_user(raw, path)

    def peek_key(self, buf: bytes):
        return peek_key(buf)

    def parse_request(self, buf: bytes):
        return parse_request_header(buf)

    def serve(self, session: Session, conn: Connection, dispatcher: Dispatcher, user,
              header: RequestHeader, early: bytes) -> Steps[None]:
        if header.command == Command.UDP:
            yield from self._serve_udp(session, conn, dispatcher, early)
            return
        link = dispatcher.dispatch(session, header.destination(), early, start_here=True)
        yield from self.relay_tcp(session, conn, link)

    def _serve_udp(self, session: Session, conn: Connection, dispatcher: Dispatcher,
                   early: bytes) -> Steps[None]:
        """Read packets until the client's EOF (server.go handleUDPPayload); answers are
        written by the table's pumps, one frame per write under a lock. Steps: the
        client's reader parks while idle."""
        policy = self._policy(session)
        table = UdpSessionTable(dispatcher, self.ctx, session.inbound_tag, session.user_level,
                                session.user_email)
        write_lock = threading.Lock()

        def respond(source: Destination, payload: bytes) -> None:
            frame = encode_trojan_packets(source, payload)
            with write_lock:
                conn.write(frame)

        stream: PacketStream = PacketStream(parse_trojan_packet)
        timer = self.ctx.timers.new_timer(policy.conn_idle, conn.abort)
        conn.settimeout(None)
        try:
            for data in _reads(early, conn, self.ctx.readiness):
                if not isinstance(data, bytes):
                    yield data  # a Wait: idle, parked
                    continue
                timer.update()
                for packet in stream.feed(data):
                    if packet.payload:  # 4.34 reads an empty one as no buffers: sends nothing
                        table.send(session.source, packet.target, packet.payload, respond)
        except TransportError as e:
            self._report(session, e)
        finally:
            timer.cancel()
            table.close()


def _reads(early: bytes, conn: Connection, waiter: ReadWaiter) -> Iterator[Union[bytes, Wait]]:
    if early:
        yield early
    yield from parkable_reads(conn, None, waiter)
