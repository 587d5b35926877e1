"""The VLESS outbound (v2ray ``proxy/vless/outbound/outbound.go``).

Servers round-robin, a user at random per connection; the header waits up to 100 ms for
the first payload so both leave in one write; the server's ``ver | addons`` is stripped from
the front of its answer. UDP goes as ``len | packet`` frames. With ``mux`` the handler's
Mux.cool client dials ``v1.mux.cool`` through here: command 3, no address.
"""
from __future__ import annotations

import random

from v2sync.common.protocol.command import command_for
from v2sync.common.protocol.packets import encode_length_packet, parse_length_packet
from v2sync.common.registry import OUTBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.proxy.keyed import KeyedOutbound
from v2sync.proxy.vless.config import VlessOutboundConfig
from v2sync.proxy.vless.encoding import (Command, RequestHeader, encode_request_header,
                                         parse_response_header)
from v2sync.transport.link import Link


@OUTBOUNDS.register("vless")
class VlessOutbound(KeyedOutbound):
    config_type = VlessOutboundConfig

    def process_steps(self, session: Session, link: Link) -> Steps[None]:
        server, conn = self.dial(link)  # first, as 4.34's outbound.go
        try:
            user = random.choice(server.users)
            target = session.destination()
            command = command_for(target)
            header = encode_request_header(RequestHeader(user.key, command, target.address,
                                                         target.port))
            udp = command == Command.UDP
            yield from self.relay_steps(session, conn, link, user.level, header,
                       encode_length_packet if udp else None,
                       parse_length_packet if udp else None, parse_response_header)
        finally:
            conn.close()
