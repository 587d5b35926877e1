"""The blackhole outbound (v2ray ``proxy/blackhole``): drop the connection.

With ``response: {type: "http"}`` it first answers with 4.34's exact 403 bytes, then, as
4.34 sleeps a second, holds the link a second without reading it, and ends it with an
interrupt, as blackhole.go's ``common.Interrupt(link.Writer)``: the inbound closes the
client's connection at once. What the client sends meanwhile waits in the uplink pipe, up
to its limit, and then in the kernel, as in 4.34 (UDP datagrams past the limit are
dropped). Reading and dropping it instead let one client push ~1.5 GB a second through the
proxy's CPU, and a clean end of the downlink left the inbound waiting ``uplinkOnly`` more
for the client (both found by a review).
"""
from __future__ import annotations

from v2sync.common.registry import OUTBOUNDS
from v2sync.common.session import Session
from v2sync.features.proxy import ProxyContext
from v2sync.proxy.blackhole.config import BlackholeConfig
from v2sync.proxy.relay import wait_unless_interrupted
from v2sync.transport.link import Link

HOLD_AFTER_RESPONSE = 1.0  # blackhole.go: time.Sleep(time.Second) after the response

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
            wait_unless_interrupted(link, HOLD_AFTER_RESPONSE)  # a shutdown ends it sooner
        link.writer.interrupt()
