"""The HTTP outbound's HTTP/2 side (4.34 ``proxy/http/client.go`` connectHTTP2 and
``cachedH2Conns``): CONNECT streams on one cached connection per server."""
from __future__ import annotations

import threading
import time
from typing import Dict, Optional

from v2sync.common.errors import RemoteProtocolError, TransportError
from v2sync.common.net import Destination
from v2sync.common.session import Session
from v2sync.proxy.http.encoding import authority
from v2sync.proxy.http.h2session import H2Session, IdleWatch, Tunnel, relay_tunnel
from v2sync.transport.internet.conn import Connection
from v2sync.transport.link import Link

class TunnelPool:
    """The HTTP outbound's HTTP/2 connections, one per server (client.go cachedH2Conns).

    4.34 keeps a connection until it fails; here an idle one also closes after the
    level-0 connIdle (300 s by default), so no reading thread outlives its use for long.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self._lock = threading.Lock()
        self._sessions: Dict[Destination, H2Session] = {}

    def get(self, server: Destination) -> Optional[H2Session]:
        with self._lock:
            session = self._sessions.get(server)
        return session if session is not None and session.can_open() else None

    def add(self, server: Destination, conn: Connection, name: str) -> H2Session:
        conn.settimeout(None)  # the idle watch and the relays' timers bound it
        session = H2Session(conn, True, name)
        watch = IdleWatch(session, self.ctx.timers, self.ctx.policy.for_level(0).conn_idle)
        session.arm_idle = watch.arm
        session.start()
        watch.arm()
        self.ctx.threads.spawn(f"{name}-read", session.run_reader)
        with self._lock:
            self._sessions[server] = session
        return session

    def connect(self, session: Session, h2s: H2Session, policy, auth: Optional[str],
                first: bytes) -> Tunnel:
        """A CONNECT stream answered 200, ``first`` sent on it; a refusal or a server that
        does not answer in the handshake's time raises TransportError, so the outbound's
        retry tries the next server, as 4.34's retry wraps its HTTP/2 CONNECT too (it was
        one try outside the retry; found by a review)."""
        target = session.destination()
        # As Go's http2 transport sends them for 4.34: pseudo-headers, then the rest sorted.
        headers = [(":authority", authority(target)), (":method", "CONNECT")]
        if auth is not None:
            headers.append(("proxy-authorization", auth))
        headers += [("accept-encoding", "gzip"), ("user-agent", GO_H2_USER_AGENT)]
        tunnel = h2s.open(headers)
        deadline = time.monotonic() + policy.handshake
        try:
            if first:  # within the handshake's time: a server that opens no window for it
                h2s.send(tunnel, first, deadline)  # held the tunnel past connIdle (review)
            h2s.wait_headers(tunnel, deadline)
            status = tunnel.header(":status")
            if status != "200":
                raise TransportError(f"Proxy responded with non 200 code: {status}")
        except RemoteProtocolError as e:
            self._drop(h2s, tunnel)
            raise TransportError(str(e)) from e
        except BaseException:
            self._drop(h2s, tunnel)
            raise
        return tunnel

    @staticmethod
    def _drop(h2s: H2Session, tunnel: Tunnel) -> None:
        h2s.reset(tunnel)
        if h2s.forget(tunnel):
            h2s.arm_idle()

    def relay(self, session: Session, h2s: H2Session, tunnel: Tunnel, link: Link,
              policy) -> None:
        error = relay_tunnel(self.ctx, session.name(), policy, h2s, tunnel, link)
        if error is not None:
            raise TransportError(f"http/2 tunnel ended: {error}") from error

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()


# What Go's HTTP/2 transport sends as User-Agent on a request that sets none.
GO_H2_USER_AGENT = "Go-http-client/2.0"
