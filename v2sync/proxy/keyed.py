"""What VLESS and Trojan share: a plain request header that names the user by a key, the
raw stream after it, UDP as framed datagrams in that stream, and fallbacks for everything
that is not a known user (v2ray ``proxy/vless/{inbound,outbound}``, ``proxy/trojan``).

``KeyedInbound.handshake`` runs parked in the handshake selector. With fallbacks, as 4.34
decides: one first read; too short for the key, not the protocol, or an unknown key goes to
the fallback with every byte read replayed. Without fallbacks an unknown key closes the
connection as soon as the key has arrived (Trojan: after the first read, as 4.34's
server.go judges it either way). A protocol subclass supplies its codec (peek the
key, parse the header) and how its request is served.
"""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Callable, List, Mapping, Optional, Tuple

from v2sync.app.log.access import AccessLog
from v2sync.common.errors import (AuthenticationError, HandshakeClosed, HandshakeTimeout,
                                  RemoteProtocolError, TransportError)
from v2sync.common.protocol.packets import PacketStream, Parser
from v2sync.common.protocol.server_spec import ServerPicker
from v2sync.common.protocol.users import KeyedUserTable
from v2sync.common.session import Session
from v2sync.features.proxy import ProxyContext
from v2sync.features.routing import Dispatcher
from v2sync.proxy.fallback import FallbackTable, serve_fallback
from v2sync.common.task import Steps
from v2sync.proxy.relay import Parkable, aborted_with, link_pause, run_relay_steps
from v2sync.transport.copy import (PipeDrain, parkable_reads, parking,
                                   read_or_park, write_chunks, write_or_stop)
from v2sync.transport.internet.conn import (HANDSHAKE_READ_SIZE, Connection, Handshake,
                                            GoReads, HandshakeReader)
from v2sync.transport.internet.dialer import dial_server
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.link import Link
from v2sync.transport.pipe import ReadTimeout

log = logging.getLogger(__name__)

# An honest header is under 300 bytes (a 255-byte domain); past this it is not worth reading.
MAX_HEADER_BYTES = 4096
DIAL_ATTEMPTS = 5  # vless outbound.go: retry.ExponentialBackoff(5, 200)
FIRST_PAYLOAD_WAIT = 0.1  # outbound.go: buf.CopyOnceTimeout(..., 100 ms)
MAX_RESPONSE_HEADER = 1 + 1 + 255

Encode = Callable[[bytes], bytes]
Serve = Callable[[], object]  # returns steps (a generator) to run, or None when done


class KeyedInbound:
    """The inbound half; also the ``UserManager`` the API calls."""

    # Its refusals get an access line, as 4.34's server writes one (AccessRejected).
    logs_rejected = True
    logs_empty_close = False  # 4.34 writes no line for io.EOF (a client that sent nothing)

    label = ""             # the protocol's name in messages, and its API accounts' kind
    probe_size = 0         # bytes the first read needs before the key can be judged
    # Whether the first read is judged even without fallbacks (Trojan's server.go does;
    # VLESS reads its header field by field then).
    first_read_decides = False
    # Whether a first read that times out or meets the EOF goes to the fallbacks as 0
    # bytes (VLESS's inbound.go ignores that read's error; Trojan's server.go closes).
    silence_falls_back = False
    # Whether a client sent to the fallbacks gets a rejected access line too (Trojan's
    # server.go records one before it falls back; VLESS's inbound.go does not).
    logs_fallbacks = False
    parse_user_entry: Callable[[Any, str], Any]

    def __init__(self, settings, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.users: KeyedUserTable = KeyedUserTable(self.label)
        for i, user in enumerate(settings.users):
            self.users.add(user, f"settings.clients[{i}]")
        self.fallbacks = FallbackTable(settings.fallbacks)
        self.handshake_policy = ctx.policy.for_level(0)  # as 4.34: level 0 until the user
        self.access_log = AccessLog()  # a fallback's rejected line (refusals: the handler's)

    # -- UserManager -----------------------------------------------------------------
    @property
    def account_protocol(self) -> str:
        return self.label

    def add_user(self, client: Mapping[str, Any]) -> None:
        self.users.add(self.parse_user_entry(client, "user"), "user")

    def remove_user(self, email: str) -> None:
        self.users.remove(email)

    # -- protocol hooks --------------------------------------------------------------
    def peek_key(self, buf: bytes) -> Optional[bytes]:
        raise NotImplementedError

    def parse_request(self, buf: bytes):
        raise NotImplementedError

    def serve(self, session: Session, conn: Connection, dispatcher: Dispatcher, user,
              header, early: bytes) -> object:
        """The rest once the header is read: steps (a generator), or None when done."""
        raise NotImplementedError

    # -- the handshake ----------------------------------------------------------------
    def handshake(self, session: Session, conn: Connection,
                  dispatcher: Dispatcher) -> Handshake[Optional[Serve]]:
        deadline = time.monotonic() + self.handshake_policy.handshake
        reader = HandshakeReader(conn, deadline, MAX_HEADER_BYTES,
                                 GoReads.of(conn, first_apart=True))
        if self.fallbacks or self.first_read_decides:
            first = yield from self._first_read(reader)
            reason = self._refusal(first)
            if reason is not None and not self.fallbacks:
                raise AuthenticationError(f"{self.label}: {reason} from {conn.remote}")
            if reason is not None:
                fallback = self.fallbacks.select_for(conn, first)
                log.info("%s: %s from %s: %s; fallback to %s", session.name(), self.label,
                         conn.remote, reason, fallback.dest)
                if self.logs_fallbacks:
                    self.access_log.rejected(session, f"{self.label}: {reason}")
                return partial(serve_fallback, self.ctx, session.name(), conn, fallback,
                               first)
        key = yield from reader.parse_steps(self._peek_whole)
        user = self.users.get(key)
        if user is None:
            raise AuthenticationError(f"{self.label}: invalid user from {conn.remote}")
        header = yield from reader.parse_steps(self.parse_request)
        session.user_email = user.email
        session.user_level = user.level
        return partial(self.serve, session, conn, dispatcher, user, header,
                       reader.consume(len(reader.buf)))

    def _first_read(self, reader: HandshakeReader) -> Handshake[bytes]:
        """The first read, which 4.34 judges alone. VLESS's ignores that read's error
        (``silence_falls_back``): with fallbacks, a client silent until the handshake
        deadline, or one that closed first, reads as 0 bytes and goes to the fallback,
        which may speak first (an SSH server sharing the port)."""
        try:
            yield from reader.fill_steps()
        except (HandshakeTimeout, HandshakeClosed):
            if not (self.fallbacks and self.silence_falls_back):
                raise
        return bytes(reader.buf)

    def _peek_whole(self, buf: bytes) -> Optional[Tuple[bytes, int]]:
        key = self.peek_key(buf)
        return None if key is None else (key, 0)

    def _refusal(self, first: bytes) -> Optional[str]:
        """Why the first read goes to the fallback; None: a known user."""
        if len(first) < self.probe_size:
            return f"first read of {len(first)} bytes"
        try:
            key = self.peek_key(first)
        except RemoteProtocolError as e:
            return str(e)
        if key is None or self.users.get(key) is None:
            return "unknown user"
        return None

    # -- serving pieces ----------------------------------------------------------------
    def relay_tcp(self, session: Session, conn: Connection, link: Link,
                  response_head: bytes = b"") -> Steps[None]:
        """The raw stream both ways (the client's first bytes went with the dispatch);
        ``response_head`` goes out with the first response. Steps: the client's reader
        parks while idle."""
        waiter = self.ctx.readiness

        def abort() -> None:
            conn.abort()
            link.interrupt()

        def request(timer) -> Steps[None]:
            for data in parkable_reads(conn, link.writer, waiter):
                if not isinstance(data, bytes):
                    yield data  # a Wait: idle, parked
                    continue
                timer.update()
                if not write_or_stop(link.writer, data):
                    break
                del data
            outbound_gone = link.writer.is_closed  # interrupted: the outbound stopped reading
            link.writer.close()
            if outbound_gone:
                await_client(conn)

        head = response_head  # 4.34 sends no header when the upstream gave nothing

        def send(chunks: List[bytes]) -> None:
            nonlocal head
            if head:  # joined to the first chunk: one TLS record, not a 2-byte one of its own
                chunks = [head + chunks[0], *chunks[1:]]
                head = b""
            write_chunks(conn, chunks)

        self._report(session, (yield from run_relay_steps(
            self.ctx, session.name(), self._policy(session), conn, abort, Parkable(request),
            PipeDrain(link.reader, send, lambda: _unanswered(head, abort), conn))))

    def relay_packets(self, session: Session, conn: Connection, link: Link, early: bytes,
                      parse: Parser, encode: Encode, response_head: bytes = b"") -> Steps[None]:
        """Datagrams framed in the stream, to and from one dispatched UDP link. Steps: the
        client's reader parks while idle."""
        stream: PacketStream = PacketStream(parse)
        waiter = self.ctx.readiness

        def abort() -> None:
            conn.abort()
            link.interrupt()

        def request(timer) -> Steps[None]:
            for data in _with_early(early, parkable_reads(conn, link.writer, waiter)):
                if not isinstance(data, bytes):
                    yield data  # a Wait: idle, parked
                    continue
                timer.update()
                if not all(write_or_stop(link.writer, p) for p in stream.feed(data)):
                    break
            link.writer.close()

        head = response_head

        def send(chunks: List[bytes]) -> None:
            nonlocal head
            out = head + b"".join([encode(c) for c in chunks])
            head = b""
            conn.write(out)

        drain = PipeDrain(link.reader, send, lambda: _unanswered(head, abort), conn)
        self._report(session, (yield from run_relay_steps(
            self.ctx, session.name(), self._policy(session), conn, abort, Parkable(request),
            drain)))

    def _policy(self, session: Session):
        return self.ctx.policy.for_level(session.user_level)

    def _report(self, session: Session, error: Optional[BaseException]) -> None:
        if error is not None:
            log.debug("%s: %s relay ended: %s", session.name(), self.label, error)


def _unanswered(head: bytes, abort: Callable[[], None]) -> None:
    """The upstream ended: with a response header still unsent (VLESS's), it gave nothing,
    and 4.34's ``getResponse`` fails the connection then (its first read is EOF): closed at
    once, without the header, rather than after uplinkOnly. Trojan has no header, and 4.34
    ends its response normally there."""
    if head:
        abort()


def await_client(conn: Connection) -> None:
    """The outbound stopped reading: wait, as 4.34's request copy does, until the client
    sends (4.34 reads it, fails to pass it on and closes), closes, or the activity timer
    ends it (uplinkOnly once the response is out).

    Closing at once would race the client: over WebSocket our close frame draws the peer's
    close frame after we closed, the kernel answers it with a reset, and a v2ray client
    (which takes any close frame as an error) then drops the answer it had not yet passed
    on (tests/scenarios/test_accept_proxy_protocol.py: one run in four lost the 403)."""
    try:
        # What has arrived, read whole: nothing left unread. A parking reader's socket
        # gives up every PARK_AFTER: wait on (the activity timer bounds this).
        while conn.read_or_none(HANDSHAKE_READ_SIZE) is None:
            pass
    except TransportError:
        pass  # aborted by the timer, or reset: the relay is over either way


def _with_early(early: bytes, reads):
    if early:
        yield early
    yield from reads


# -- the outbound half ---------------------------------------------------------------------

class KeyedOutbound:
    """Dial a server, send the header with the first payload, relay raw or framed."""

    starts_in_caller = True  # OutboundHandler.starts_here

    def __init__(self, settings, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.client = StreamClient.for_handler(handler_config)
        self.picker: ServerPicker = ServerPicker(settings.servers)

    dial_step = 0.2  # seconds; each protocol's 4.34 client has its own

    def dial(self, link: Link) -> Tuple[Any, Connection]:
        """(server, connection): each try takes the next server, as 4.34's outbounds call
        ``PickServer`` inside their retry."""
        return dial_server(self.picker.pick, DIAL_ATTEMPTS, self.dial_step, self.client,
                           link_pause(link))

    def relay_steps(self, session: Session, conn: Connection, link: Link, level: int,
                    header: bytes, encode: Optional[Encode], parse: Optional[Parser],
                    response_header: Optional[Parser]) -> Steps[None]:
        """The relay once dialed; ``encode``/``parse``: the datagram framing (None: a raw
        stream); ``response_header``: the server's header to strip first (None: there is
        none). Steps: the reader of the server's answer parks while idle."""
        waiter = self.ctx.readiness
        policy = self.ctx.policy.for_level(level)
        frame = encode or (lambda data: data)

        def abort() -> None:
            conn.abort()
            link.interrupt()

        def first(timer) -> None:
            payload = _first_payload(link)
            conn.write(header + (frame(payload) if payload else b""))

        def send(chunks: List[bytes]) -> None:
            conn.write(b"".join([frame(c) for c in chunks]))

        def response(timer) -> Steps[None]:
            rest = b""
            if response_header:
                rest = yield from _read_response_header(conn, response_header, waiter)
            stream: Optional[PacketStream] = PacketStream(parse) if parse is not None else None
            for data in _with_early(rest, parkable_reads(conn, link.writer, waiter)):
                if not isinstance(data, bytes):
                    yield data  # a Wait: idle, parked
                    continue
                timer.update()
                pieces: List[bytes] = stream.feed(data) if stream is not None else [data]
                if not all(write_or_stop(link.writer, p) for p in pieces):
                    break
            link.writer.close()

        # After a first payload of EOF the pipe gives EOF again: the drain ends at once.
        with aborted_with(link, abort):
            error = yield from run_relay_steps(self.ctx, session.name(), policy, conn, abort,
                                               PipeDrain(link.reader, send, conn=conn),
                                               Parkable(response), first)
        if error is not None:
            raise TransportError(f"relay ended: {error}") from error


def _first_payload(link: Link):
    """Up to 100 ms for the first chunk, so the header leaves with it; None: nothing came."""
    try:
        return link.reader.read(timeout=FIRST_PAYLOAD_WAIT)
    except ReadTimeout:
        return None


def _read_response_header(conn: Connection, parse: Parser,
                          waiter=None) -> Steps[bytes]:
    """Strip the server's response header; returns the body bytes read past it. (VLESS
    sends it with the first answer: a held connection waits here, parked by ``waiter``.)"""
    buf = b""
    waiter = parking(conn, waiter)
    while True:
        parsed = parse(buf)
        if parsed is not None:
            return buf[parsed[1]:]
        if len(buf) > MAX_RESPONSE_HEADER:
            raise RemoteProtocolError("response header too large")
        data = yield from read_or_park(conn, HANDSHAKE_READ_SIZE, waiter)
        if not data:
            raise RemoteProtocolError("server closed before its response header")
        buf += data
