"""The VLESS inbound (v2ray ``proxy/vless/inbound/inbound.go``).

The handshake and fallbacks are ``proxy.keyed``'s. A request is served as 4.34 serves it:
TCP as the raw stream, UDP as ``len | packet`` frames to one target; the response header
(``ver | addons``) goes out with the first response bytes. Mux (command 3) dispatches
``v1.mux.cool``, which the inbound's dispatcher (``common.mux.server.MuxServer``) serves,
as for VMess; its frames are the stream after the header.
"""
from __future__ import annotations

from v2sync.common.protocol.packets import encode_length_packet, parse_length_packet
from v2sync.common.registry import INBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.features.routing import Dispatcher
from v2sync.proxy.keyed import KeyedInbound
from v2sync.proxy.vless.config import VlessInboundConfig, parse_user
from v2sync.proxy.vless.encoding import (PROBE_SIZE, Command, RequestHeader,
                                         encode_response_header, parse_request_header,
                                         peek_user)
from v2sync.transport.internet.conn import Connection


@INBOUNDS.register("vless")
class VlessInbound(KeyedInbound):
    config_type = VlessInboundConfig
    label = "vless"
    probe_size = PROBE_SIZE
    silence_falls_back = True

    @staticmethod
    def parse_user_entry(raw, path: str):
        return parse_user(raw, path, outbound=False)

    def peek_key(self, buf: bytes):
        return peek_user(buf)

    def parse_request(self, buf: bytes):
        return parse_request_header(buf)

    def serve(self, session: Session, conn: Connection, dispatcher: Dispatcher, user,
              header: RequestHeader, early: bytes) -> Steps[None]:
        head = encode_response_header()
        if header.command == Command.UDP:
            link = dispatcher.dispatch(session, header.destination())
            yield from self.relay_packets(session, conn, link, early, parse_length_packet,
                                          encode_length_packet, head)
        else:
            link = dispatcher.dispatch(session, header.destination(), early, start_here=True)
            yield from self.relay_tcp(session, conn, link, head)
