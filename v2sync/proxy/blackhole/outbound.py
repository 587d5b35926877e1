"""The blackhole outbound (v2ray ``proxy/blackhole``): drop the connection.

With ``response: {type: "http"}`` it first answers with 4.34's exact 403 bytes, then, as
4.34 sleeps a second before it ends the link, holds the link a second while what the client
sends is read and dropped: the close then comes a second after the 403, cleanly (a close
with the client's bytes unread would be a reset, which can lose the 403), and UDP datagrams
meanwhile are swallowed, as in 4.34. The pipe is then closed gracefully: the 403, then EOF.
"""
from __future__ import annotations

import time

from v2sync.common.errors import TransportError
from v2sync.common.registry import OUTBOUNDS
from v2sync.common.session import Session
from v2sync.features.proxy import ProxyContext
from v2sync.proxy.blackhole.config import BlackholeConfig
from v2sync.proxy.relay import wait_unless_interrupted
from v2sync.transport.link import Link
from v2sync.transport.pipe import EOF, ReadTimeout

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
            _drop_for(link, HOLD_AFTER_RESPONSE)
            return  # the handler closes the downlink: 403, then EOF
        link.writer.interrupt()


def _drop_for(link: Link, seconds: float) -> None:
    """Read and drop what the client sends for ``seconds`` (blackhole.go's sleep)."""
    deadline = time.monotonic() + seconds
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if link.reader.read(timeout=remaining) is EOF:
                # The client is done: the second is waited out unless a shutdown aborts it.
                wait_unless_interrupted(link, deadline - time.monotonic())
                return
    except ReadTimeout:
        return
    except TransportError:
        return  # interrupted: the connection is being torn down
