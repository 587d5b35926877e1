"""The blackhole outbound (v2ray ``proxy/blackhole``): drop the connection.

With ``response: {type: "http"}`` it first answers with 4.34's exact 403 bytes. v2ray then
sleeps a second and interrupts the pipe (which could still drop the 403); here the 403 is
queued and the pipe closed gracefully, so the client always receives it, then EOF.
"""
from __future__ import annotations

from v2sync.common.registry import OUTBOUNDS
from v2sync.common.session import Session
from v2sync.features.proxy import ProxyContext
from v2sync.proxy.blackhole.config import BlackholeConfig
from v2sync.transport.link import Link

# blackhole/config.go writes it as a Go raw string: bare LF line ends and two blank lines at
# the end (compared live in tests/scenarios/test_inbound_replies_differential.py).
HTTP_403 = (b"HTTP/1.1 403 Forbidden\nConnection: close\n"
            b"Cache-Control: max-age=3600, public\nContent-Length: 0\n\n\n")


@OUTBOUNDS.register("blackhole")
class BlackholeOutbound:
    config_type = BlackholeConfig

    def __init__(self, settings: BlackholeConfig, ctx: ProxyContext, handler_config):
        self.settings = settings

    def process(self, session: Session, link: Link) -> None:
        if self.settings.response_type == "http":
            link.writer.write(HTTP_403)
            return  # the handler closes the downlink: 403, then EOF
        link.writer.interrupt()
