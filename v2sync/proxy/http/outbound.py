"""The HTTP outbound (v2ray ``proxy/http/client.go``): a CONNECT tunnel per link.

As 4.34: the link's first payload is read before the server is dialed and goes out right
behind the CONNECT request; Basic auth when the picked server has users; any status but 200
fails the link. The connection goes through the outbound's ``streamSettings``; when its TLS
negotiates ``h2`` the tunnel is an HTTP/2 CONNECT stream instead, on one shared HTTP/2
connection per server (``h2client.TunnelPool``). UDP is refused ("UDP is not supported").

4.34 waits for that first payload without a bound; here the wait is the level's
``connIdle``, after which the request goes out without one.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from v2sync.common.errors import RemoteProtocolError, TransportError
from v2sync.common.net import Destination, Network
from v2sync.common.protocol.server_spec import ServerPicker, ServersConfig
from v2sync.common.registry import OUTBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.features.proxy import ProxyContext
from v2sync.proxy.http import encoding as enc
from v2sync.proxy.relay import link_pause, relay_upstream_steps, setup_aborted_with
from v2sync.transport.internet.conn import Connection, HandshakeReader
from v2sync.transport.internet.dialer import dial_once, with_retry
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.link import Link
from v2sync.transport.pipe import EOF, ReadTimeout

log = logging.getLogger(__name__)

DIAL_ATTEMPTS = 5  # client.go: retry.ExponentialBackoff(5, 100) around dial + CONNECT
DIAL_STEP = 0.1
ALPN_H2 = "h2"


@OUTBOUNDS.register("http")
class HttpOutbound:
    config_type = ServersConfig

    def __init__(self, settings: ServersConfig, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.client = StreamClient.for_handler(handler_config)
        self.picker = ServerPicker(settings.servers)
        self.h2 = None  # h2tunnel.TunnelPool, made on the first h2 server (imports h2)

    def process_steps(self, session: Session, link: Link) -> Steps[None]:
        """``process`` as steps: an HTTP/1.1 tunnel's idle upstream reader parks (an h2
        stream's relay blocks, as before)."""
        target = session.destination()
        if target.network is Network.UDP:
            raise TransportError("UDP is not supported by HTTP outbound")
        first = self._first_payload(link)
        tunnel = with_retry(DIAL_ATTEMPTS, DIAL_STEP,
                            lambda: self._tunnel(session, target, link, first),
                            "failed to find an available destination", pause=link_pause(link))
        if tunnel.h2 is not None:  # an HTTP/2 stream answered 200, on a cached or new connection
            self._pool().relay(session, tunnel.h2, tunnel.stream, link, tunnel.policy)
            return
        conn = tunnel.conn
        assert conn is not None  # a _Tunnel holds one or the other
        try:
            conn.write(first)  # after the 200, as 4.34's Process writes it
            error = yield from relay_upstream_steps(self.ctx, session.name(), tunnel.policy,
                                                    conn, link, tunnel.leftover)
            if error is not None:
                raise TransportError(f"http tunnel ended: {error}") from error
        finally:
            conn.close()

    def _tunnel(self, session: Session, target: Destination, link: Link,
                first: bytes) -> "_Tunnel":
        """One try of 4.34's retry: the next server, its user, then an HTTP/2 stream
        (cached connection or new) or an HTTP/1.1 CONNECT answered 200. A refusal (407,
        403, ...) is a failed try: the next goes to the next server."""
        server = self.picker.pick()
        user = server.pick_user()
        policy = self.ctx.policy.for_level(user.level if user else 0)
        auth = (user.user, user.password) if user else None
        cached = self.h2.get(server.destination) if self.h2 is not None else None
        if cached is not None:
            return self._h2_tunnel(session, cached, policy, auth, first)
        conn = dial_once(server.destination, self.client)
        try:
            # A shutdown reaches a server yet to answer, its TLS handshake (which reading
            # the ALPN finishes) or its CONNECT.
            with setup_aborted_with(link, conn):
                h2s, leftover = None, b""
                if getattr(conn, "alpn", None) == ALPN_H2:
                    h2s = self._pool().add(server.destination, conn, f"{session.name()}-h2")
                else:
                    leftover = connect_http1(conn, target, auth, policy.handshake)
        except RemoteProtocolError as e:
            conn.close()
            raise TransportError(str(e)) from e
        except BaseException:
            conn.close()
            raise
        if h2s is not None:  # the connection is the pool's now: a refused stream keeps it
            return self._h2_tunnel(session, h2s, policy, auth, first)
        return _Tunnel(policy, auth, conn=conn, leftover=leftover)

    def _h2_tunnel(self, session: Session, h2s: Any, policy: Any,
                   auth: Optional[Tuple[str, str]], first: bytes) -> "_Tunnel":
        stream = self._pool().connect(session, h2s, policy, _basic(auth), first)
        return _Tunnel(policy, auth, h2=h2s, stream=stream)

    def _first_payload(self, link: Link) -> bytes:
        wait = self.ctx.policy.for_level(0).conn_idle
        try:
            chunk = link.reader.read(timeout=wait)
        except ReadTimeout:
            return b""
        return b"" if chunk is EOF else chunk  # a closed pipe says EOF again to the relay

    def _pool(self):
        if self.h2 is None:
            # h2 is imported only once a server negotiates it
            from v2sync.proxy.http.h2client import TunnelPool
            self.h2 = TunnelPool(self.ctx)
        return self.h2

    def close(self) -> None:
        if self.h2 is not None:
            self.h2.close()


def _basic(auth: Optional[Tuple[str, str]]) -> Optional[str]:
    return enc.encode_basic_auth(*auth) if auth else None


@dataclass
class _Tunnel:
    """What a try of ``HttpOutbound._tunnel`` set up: an HTTP/2 stream (``h2``) or an
    HTTP/1.1 connection past its 200 (``conn``, with the bytes behind the 200)."""

    policy: Any
    auth: Optional[Tuple[str, str]]
    h2: Any = None
    stream: Any = None  # the HTTP/2 stream (an ``h2session.Tunnel``) answered 200
    conn: Optional[Connection] = None
    leftover: bytes = b""


def connect_http1(conn: Connection, target: Destination, auth: Optional[Tuple[str, str]],
                  timeout: float) -> bytes:
    """CONNECT, then its answer; returns the bytes the server sent behind its 200 (4.34
    drops them with its bufio.Reader; a tunnel keeps them). The first payload goes after
    the 200, as 4.34's: a proxy that refuses never sees it."""
    conn.write(enc.encode_connect_request(target, auth))
    reader = HandshakeReader(conn, time.monotonic() + timeout, enc.MAX_HEAD)
    head = reader.parse(enc.parse_response_head)
    if head.status != 200:
        raise RemoteProtocolError(
            f"Proxy responded with non 200 code: {head.status} {head.reason}".rstrip())
    return reader.consume(len(reader.buf))
