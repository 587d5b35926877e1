"""The Trojan outbound (v2ray ``proxy/trojan/client.go``).

Servers round-robin (one user each); the header waits up to 100 ms for the first payload
so both leave in one write; there is no response header. UDP packets are framed with the
target's address (``atyp addr port | len | CRLF | payload``).
"""
from __future__ import annotations

from functools import partial

from v2sync.common.net import Network
from v2sync.common.protocol.packets import encode_trojan_packets, parse_trojan_packet
from v2sync.common.registry import OUTBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.proxy.keyed import KeyedOutbound
from v2sync.proxy.trojan.config import TrojanOutboundConfig
from v2sync.proxy.trojan.encoding import Command, RequestHeader, encode_request_header
from v2sync.transport.link import Link


@OUTBOUNDS.register("trojan")
class TrojanOutbound(KeyedOutbound):
    config_type = TrojanOutboundConfig
    dial_step = 0.1  # client.go: retry.ExponentialBackoff(5, 100)

    def process_steps(self, session: Session, link: Link) -> Steps[None]:
        server, conn = self.dial(link)  # first, as 4.34's outbound.go
        try:
            target = session.destination()
            udp = target.network is Network.UDP
            command = Command.UDP if udp else Command.TCP
            header = encode_request_header(RequestHeader(server.user.key, command,
                                                         target.address, target.port))
            yield from self.relay_steps(session, conn, link, server.user.level, header,
                       partial(encode_trojan_packets, target) if udp else None,
                       _payload_of_packet if udp else None, None)
        finally:
            conn.close()


def _payload_of_packet(buf: bytes):
    """Answers for this link come from its one target: only the payload is passed on."""
    parsed = parse_trojan_packet(buf)
    return None if parsed is None else (parsed[0].payload, parsed[1])
