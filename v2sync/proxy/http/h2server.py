"""The HTTP inbound over HTTP/2 (beyond 4.34): CONNECT streams on a TLS connection that
negotiated ``h2``, so a 4.34 HTTP outbound over TLS (which offers h2 and tunnels over
HTTP/2 CONNECT when it gets it) works against v2sync, where it fails against 4.34's own
HTTP/1-only inbound.

Each stream is checked as an HTTP/1 CONNECT is (Basic auth from ``proxy-authorization``,
``:authority`` as the target), dispatched with a session copied from the connection's, and
answered ``200`` before its relay. Other methods get ``405``; bad auth ``407``.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import h2.errors

from v2sync.common.errors import AuthenticationError, RemoteProtocolError, V2SyncError
from v2sync.common.net import Destination
from v2sync.common.session import Session
from v2sync.proxy.http import encoding as enc
from v2sync.proxy.http.h2session import (SERVER_MAX_STREAMS, H2Session, IdleWatch, Tunnel,
                                         relay_tunnel)
from v2sync.transport.internet.conn import Connection

log = logging.getLogger(__name__)

METHOD_NOT_ALLOWED = 405
PROXY_AUTH_REQUIRED = 407
BAD_REQUEST = 400


def serve_h2(inbound, session: Session, conn, dispatcher) -> None:
    """Serve one h2 connection of the HTTP inbound ``inbound`` (an ``HttpInbound``)."""
    def on_request(h2s: H2Session, tunnel: Tunnel) -> None:
        _serve_stream(inbound, session, dispatcher, h2s, tunnel)

    session.protocol = "h2"
    log.info("%s: HTTP/2 connection from %s", session.name(), session.source)
    serve_connection(conn, f"{session.name()}-h2", inbound.ctx, inbound.policy.conn_idle,
                     on_request)


def _serve_stream(inbound, parent: Session, dispatcher, h2s: H2Session, tunnel: Tunnel) -> None:
    child = Session(inbound_tag=parent.inbound_tag, source=parent.source,
                    user_level=parent.user_level, sniffing=parent.sniffing)
    try:
        dest = _check(inbound, h2s, tunnel)
    except V2SyncError as e:
        log.info("%s: HTTP/2 stream %d refused: %s", child.name(), tunnel.stream_id, e)
        h2s.forget(tunnel)
        return
    if tunnel.recv.is_interrupted:  # the client reset it already: no dial for it
        h2s.forget(tunnel)
        return
    link = dispatcher.dispatch(child, dest)
    try:
        h2s.respond(tunnel, 200)
    except V2SyncError as e:  # reset meanwhile, or the connection ended: nothing to report
        log.debug("%s: HTTP/2 stream %d gone before its answer: %s", child.name(),
                  tunnel.stream_id, e)
        link.interrupt()
        h2s.forget(tunnel)
        return
    error = relay_tunnel(inbound.ctx, child.name(), inbound.policy, h2s, tunnel, link)
    if error is not None:
        log.debug("%s: HTTP/2 tunnel ended: %s", child.name(), error)


def _check(inbound, h2s: H2Session, tunnel: Tunnel) -> Destination:
    """The stream's target; answers and raises for a request it will not serve."""
    if tunnel.header(":method") != "CONNECT":
        h2s.respond(tunnel, METHOD_NOT_ALLOWED, end=True)
        raise RemoteProtocolError(f"method {tunnel.header(':method')!r} over HTTP/2")
    try:
        head = enc.RequestHead("CONNECT", tunnel.header(":authority") or "", enc.HTTP_11,
                               (("Proxy-Authorization", tunnel.header("proxy-authorization")
                                 or ""),))
        inbound._authenticate(head)
        target = enc.parse_target(head)
    except AuthenticationError:
        h2s.respond(tunnel, PROXY_AUTH_REQUIRED,
                    [("proxy-authenticate", 'Basic realm="proxy"')], end=True)
        raise
    except RemoteProtocolError:
        h2s.respond(tunnel, BAD_REQUEST, end=True)
        raise
    if target.port is None:  # parse_target refuses a CONNECT without one
        raise RemoteProtocolError("CONNECT target without port")
    return Destination.tcp(target.host, target.port)


def serve_connection(conn: Connection, name: str, ctx, idle_timeout: float,
                     on_request: Callable[[H2Session, Tunnel], None]) -> None:
    """Server side: read one HTTP/2 connection in this thread until it ends; each CONNECT
    stream goes to ``on_request`` in a thread of its own."""
    session = H2Session(conn, False, name)
    handlers = threading.BoundedSemaphore(SERVER_MAX_STREAMS)

    def handle(tunnel: Tunnel) -> None:
        try:
            on_request(session, tunnel)
        finally:
            handlers.release()

    def spawn(tunnel: Tunnel) -> None:
        """In the reader, with the session's lock held. h2 counts the streams open; a
        client that resets each stream as it opens it ("rapid reset") keeps that count
        low while every stream it opened still costs a thread and a dial: 5,000 such
        streams in one write made 4,236 threads and 5,070 dials (found by a review). So
        the streams still in hand are counted too, and one past the limit ends the
        connection, as Go's server ends a connection whose handlers pile up."""
        if not handlers.acquire(blocking=False):
            log.info("%s: over %d HTTP/2 streams in hand; closing the connection", name,
                     SERVER_MAX_STREAMS)
            session.terminate(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return
        try:
            ctx.threads.spawn(f"{name}-{tunnel.stream_id}", lambda: handle(tunnel))
        except RuntimeError:
            handlers.release()
            session.h2.reset_stream(tunnel.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)

    session.on_request = spawn
    watch = IdleWatch(session, ctx.timers, idle_timeout)
    session.arm_idle = watch.arm
    conn.settimeout(None)
    session.start()
    watch.arm()
    session.run_reader()
