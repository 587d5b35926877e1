"""The HTTP proxy inbound (v2ray ``proxy/http/server.go``).

- ``CONNECT host:port`` answers ``200 Connection established`` and relays raw bytes.
- Any other method with an absolute URI is forwarded: hop-by-hop headers removed, one
  dispatched link per request, the response relayed with ``Keep-Alive: timeout=4`` when its
  length is known; the client connection persists only after ``Proxy-Connection:
  keep-alive`` (as in 4.34); ``503`` if the upstream fails before its response head arrives.
- ``accounts`` turns on Basic auth (``407`` + ``Proxy-Authenticate``); a relative URL needs
  ``allowTransparent`` (else ``400``); a bad target gets ``400``; a head that does not parse
  gets no answer, only the close, as in 4.34.
- Beyond 4.34: when TLS negotiates ``h2``, CONNECT streams over HTTP/2 (``h2server``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from functools import partial
from typing import Callable, Optional, Tuple

from v2sync.common.errors import (AuthenticationError, PipeClosed, PipeInterrupted,
                                  ProtocolError, RemoteProtocolError, TransportError,
                                  V2SyncError)
from v2sync.common.net import Destination
from v2sync.common.registry import INBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.features.proxy import ProxyContext
from v2sync.features.routing import Dispatcher
from v2sync.proxy.http import encoding as enc
from v2sync.proxy.http.config import HttpServerConfig
from v2sync.proxy.relay import relay_stream_steps
from v2sync.transport.copy import adaptive_reads
from v2sync.transport.internet.conn import (Connection, Handshake, HandshakeReader, complete,
                                            try_write)
from v2sync.transport.link import Link
from v2sync.transport.pipe import EOF

log = logging.getLogger(__name__)


ALPN_H2 = "h2"
# Interim (1xx) responses relayed before the final one; a bound against a looping upstream.
MAX_INTERIM_RESPONSES = 8
# A client still sending its body after the answer is read (and its bytes dropped) this long.
BODY_LINGER = 2.0


class UpstreamFailed(TransportError):
    """The upstream died before its response head: the client gets 503."""


@INBOUNDS.register("http")
class HttpInbound:
    config_type = HttpServerConfig

    def __init__(self, settings: HttpServerConfig, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.policy = ctx.policy.for_level(settings.user_level, settings.timeout)

    def handshake(self, session: Session, conn: Connection,
                  dispatcher: Dispatcher) -> Handshake[Optional[Callable[[], object]]]:
        """The first request's head (parked in the selector); returns the rest."""
        session.user_level = self.settings.user_level
        if getattr(conn, "alpn", None) == ALPN_H2:  # beyond 4.34: HTTP/2 CONNECT
            return partial(self._serve_h2, session, conn, dispatcher)
        reader = HandshakeReader(conn, time.monotonic() + self.policy.handshake, enc.MAX_HEAD)
        if not (yield from _wait_readable_steps(reader)):
            return None  # connected and closed without a request: nothing to answer
        head = yield from self._read_request(reader, conn, session)
        return partial(self._serve, session, conn, dispatcher, reader, head)

    def _serve_h2(self, session: Session, conn: Connection, dispatcher: Dispatcher) -> None:
        from v2sync.proxy.http.h2server import serve_h2  # h2 only when a client speaks it
        serve_h2(self, session, conn, dispatcher)

    def _serve(self, session: Session, conn: Connection, dispatcher: Dispatcher,
               reader: HandshakeReader, head: enc.RequestHead) -> Steps[None]:
        """Requests until one ends the connection; steps, so a CONNECT tunnel's idle
        reader parks (``Handoff.serve_steps``)."""
        while True:
            target = enc.parse_target(head)
            if target.form is enc.TargetForm.AUTHORITY:
                yield from self._tunnel(session, conn, dispatcher, reader, target)
                return
            if not self._serve_one(session, conn, dispatcher, reader, head, target):
                return
            # The next request on a kept-alive connection; its thread waits for it.
            reader.deadline = time.monotonic() + self.policy.handshake
            if not reader.buf and not _wait_readable(reader):
                return  # the client closed a kept-alive connection between requests
            head = complete(self._read_request(reader, conn, session))

    def _read_request(self, reader: HandshakeReader, conn: Connection, session: Session
                      ) -> Handshake[enc.RequestHead]:
        try:
            head = yield from reader.parse_steps(enc.parse_request_head)
            # Each request on a kept-alive connection authenticates anew; the name is the
            # session's user email, which routing's "user" matches (http/server.go in 4.34).
            session.user_email, session.email_in_access_log = self._authenticate(head), False
            session.access_to = enc.access_url(head)
            return head
        except RemoteProtocolError as e:
            if e.reply:  # a head that does not parse has none: 4.34 just closes
                try_write(conn, e.reply)
            raise
        except AuthenticationError:
            try_write(conn, enc.response_407())
            raise

    def _authenticate(self, head: enc.RequestHead) -> str:
        """The account's user name ("" when the inbound has no accounts)."""
        if not self.settings.accounts:
            return ""
        creds = enc.parse_basic_auth(head.header("Proxy-Authorization"))
        if creds is None or self.settings.accounts.get(creds[0]) != creds[1]:
            raise AuthenticationError("proxy authentication failed")
        return creds[0]

    def _serve_one(self, session: Session, conn: Connection, dispatcher: Dispatcher,
                   reader: HandshakeReader, head: enc.RequestHead,
                   target: enc.RequestTarget) -> bool:
        """Serve one forwarded request; True if the client connection stays open for
        another."""
        if not target.host and not self.settings.allow_transparent:  # http/server.go: URL.Host
            conn.write(enc.response_400())
            raise RemoteProtocolError(f"no host in URL {target.url[:64]!r} without allowTransparent")
        dest = enc.request_destination(head, target)
        if dest is None:
            conn.write(enc.response_400())
            raise RemoteProtocolError("request names no host")
        framing = enc.framing_for_request(head)  # refused before a byte goes upstream
        # 4.34's handlePlainHTTP dispatches with a session content of its own, protocol
        # "http/1.1": the inbound's sniffing request is not in it, so the request is neither
        # sniffed nor its target overridden. A later CONNECT keeps the connection's.
        request = replace(session, protocol="http/1.1", sniffing=None)
        link = dispatcher.dispatch(request, dest, start_here=True)
        return self._forward(request, conn, link, reader, head, target, framing)

    # -- CONNECT -----------------------------------------------------------------------
    def _tunnel(self, session, conn, dispatcher, reader,
                target: enc.RequestTarget) -> Steps[None]:
        if target.port is None:  # parse_target refuses a CONNECT without one already
            raise RemoteProtocolError("CONNECT target without port", reply=enc.response_400())
        conn.write(enc.CONNECT_ESTABLISHED)  # before the dispatch, as handleConnect
        early = reader.consume(len(reader.buf))
        link = dispatcher.dispatch(session, Destination.tcp(target.host, target.port), early,
                                   start_here=True)
        error = yield from relay_stream_steps(self.ctx, session.name(), self.policy, conn, link)
        if error is not None:
            log.debug("%s: tunnel ended: %s", session.name(), error)

    # -- plain forwarding ----------------------------------------------------------------
    def _forward(self, session, conn, link: Link, reader, head, target,
                 framing: enc.Framing) -> bool:
        """One request upstream and its answer back; True to keep the connection. The
        body goes on in a task of its own while the answer is read, as 4.34 runs the two at
        once: an early answer (a 413 to an upload, a 100 Continue) is not held back."""
        body = _RequestBody(conn, link, reader, framing, self.policy.conn_idle)
        try:
            link.writer.write(enc.encode_request_head(enc.forward_request_head(head, target)))
            body.send_buffered()
        except (PipeInterrupted, PipeClosed) as e:
            # The outbound may have stopped reading because it already answered (blackhole's
            # 403); whether there is an answer is decided by reading for it.
            log.debug("%s: request not fully sent: %s", session.name(), e)
        except (TransportError, ProtocolError):
            link.interrupt()  # the client failed mid-request: nobody waits for an answer
            raise
        sender = None if body.done else self.ctx.threads.spawn(f"{session.name()}-body",
                                                               body.send_rest)
        try:
            keep_alive = self._answer(session, conn, link, head)
        finally:
            link.interrupt()  # the upstream was told "Connection: close"; tear it down now
            if sender is not None:
                _finish_body(conn, sender)
        return keep_alive and body.whole

    def _answer(self, session, conn: Connection, link: Link, head: enc.RequestHead) -> bool:
        """The upstream's answer to the client (or 503); True if it allows keep-alive."""
        try:
            response, leftover = self._read_response_head(conn, link)
            framing = _response_framing(response, head.method)
        except (UpstreamFailed, TransportError) as e:
            link.interrupt()
            try_write(conn, enc.response_503())
            log.info("%s: upstream failed: %s", session.name(), e)
            return False
        # As 4.34: the headers promise keep-alive whenever the length is known; the
        # connection is then kept only if the request asked for it (http/server.go).
        length_known = framing.kind in (enc.BodyKind.NONE, enc.BodyKind.LENGTH)
        keep_alive = length_known and enc.request_wants_keep_alive(head)
        conn.write(enc.encode_response_head(enc.forward_response_head(response, length_known)))
        self._send_response_body(conn, link, framing, leftover)
        return keep_alive

    def _read_response_head(self, conn: Connection, link: Link) -> Tuple[enc.ResponseHead, bytes]:
        """The final response head; interim 1xx heads (100 Continue) go to the client as-is."""
        buf = b""
        for _ in range(MAX_INTERIM_RESPONSES + 1):
            head, buf = self._next_response_head(link, buf)
            if not 100 <= head.status < 200 or head.status == 101:
                return head, buf
            conn.write(enc.encode_response_head(head))
        raise UpstreamFailed("too many interim responses")

    def _next_response_head(self, link: Link, buf: bytes) -> Tuple[enc.ResponseHead, bytes]:
        while True:
            try:
                parsed = enc.parse_response_head(buf)
            except RemoteProtocolError as e:
                raise UpstreamFailed(f"bad response head: {e}") from e
            if parsed is not None:
                return parsed[0], buf[parsed[1]:]
            chunk = self._read_link(link)
            if chunk is EOF:
                raise UpstreamFailed("upstream closed before its response head")
            buf += chunk

    def _send_response_body(self, conn: Connection, link: Link, framing: enc.Framing,
                            leftover: bytes) -> None:
        framer = enc.BodyFramer(framing)
        data = leftover
        while True:
            body, _ = framer.feed(data)  # bytes past the body are the upstream's mistake
            if body:
                conn.write(body)
            if framer.done:
                return
            chunk = self._read_link(link)
            if chunk is EOF:
                framer.feed_eof()
                return
            data = chunk

    def _read_link(self, link: Link):
        try:
            return link.reader.read(timeout=self.policy.conn_idle)
        except V2SyncError as e:
            raise UpstreamFailed(str(e)) from e


class _RequestBody:
    """A request's body, from the client to the link as its head frames it."""

    def __init__(self, conn: Connection, link: Link, reader: HandshakeReader,
                 framing: enc.Framing, idle: float):
        self.conn, self.link, self.reader, self.idle = conn, link, reader, idle
        self.framer = enc.BodyFramer(framing)
        self.whole = self.framer.done  # all of it went upstream: the connection may go on

    @property
    def done(self) -> bool:
        return self.framer.done

    def send_buffered(self) -> None:
        """What the request's reads already hold: for most requests, all of the body."""
        self._send(self.reader.consume(len(self.reader.buf)))

    def send_rest(self) -> None:
        """The sender task: the rest of the body. A client that fails mid-body interrupts
        the link (nobody waits for an answer to half a request). Once the link takes no
        more (the answer is in, or the upstream ended), what the client still sends is
        read and dropped until the body ends or ``_finish_body`` closes the connection."""
        try:
            self.conn.settimeout(self.idle)
            for data in adaptive_reads(self.conn, self.link.writer):  # a stalled upstream
                self._send(data)                                      # stops the reads
                if self.done:
                    return
            if not self.link.writer.is_closed:
                self.framer.feed_eof()  # the client ended mid-body: raises
        except (PipeInterrupted, PipeClosed):
            pass
        except (TransportError, ProtocolError) as e:
            log.debug("request body failed: %s", e)
            self.link.interrupt()
            return
        self._drop_rest()

    def _send(self, data: bytes) -> None:
        body, rest = self.framer.feed(data)
        self.reader.buf += rest  # a pipelined next request stays for the next round
        self.link.writer.write(body)
        self.whole = self.framer.done

    def _drop_rest(self) -> None:
        try:
            for data in adaptive_reads(self.conn):
                self.framer.feed(data)
                if self.framer.done:
                    return
        except (TransportError, ProtocolError):
            return


def _finish_body(conn: Connection, sender) -> None:
    """Once the answer is out: a client still sending its body gets the end of the answer
    (a FIN) and BODY_LINGER seconds to finish, read and dropped, before the connection is
    cut. Closing on unread bytes resets the connection, and a reset can destroy the answer
    still in the client's receive buffer (why HTTP servers linger when they close)."""
    if not sender.is_alive():
        return
    conn.shutdown_write()
    sender.join(BODY_LINGER)
    if sender.is_alive():
        conn.abort()
        sender.join(BODY_LINGER)


def _response_framing(response: enc.ResponseHead, method: str) -> enc.Framing:
    """How the response's body is framed; framing Go's ``ReadResponse`` refuses (a bad or
    conflicting Content-Length, a Transfer-Encoding other than chunked) is the upstream's
    failure, which 4.34 answers with its 503."""
    try:
        return enc.framing_for_response(response, method)
    except RemoteProtocolError as e:
        raise UpstreamFailed(f"bad response framing: {e}") from e


def _wait_readable(reader: HandshakeReader) -> bool:
    """Block (within the deadline) for the next request's first bytes; False on clean EOF."""
    return complete(_wait_readable_steps(reader))


def _wait_readable_steps(reader: HandshakeReader) -> Handshake[bool]:
    try:
        yield from reader.fill_steps()
        return True
    except RemoteProtocolError:
        return False  # "connection closed during handshake" with nothing sent: a normal end

