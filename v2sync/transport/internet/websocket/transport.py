"""``network: "ws"`` on live connections (v2ray ``transport/internet/websocket``).

Each write is one binary frame (client frames masked); reads stream frame payloads as they
arrive, answer pings, and turn a close frame into EOF after echoing it. The reader thread
may write (pong, close echo) while the relay's writer writes data, so frames go out under
``_write_lock`` and never interleave.
"""
from __future__ import annotations

import os
import threading
import time
from typing import List, Optional

from v2sync.common.errors import (HandshakeClosed, HandshakeTimeout, LocalProtocolError, ProtocolError,
                                  RemoteProtocolError, TransportError)
from v2sync.common.net import Address, Destination
from v2sync.common.registry import TRANSPORTS
from v2sync.transport.internet.config import StreamSettings
from v2sync.transport.internet.conn import (Connection, FinishOnFirstUse, Handshake,
                                            HandshakeReader, WrappedConnection,
                                            hand_back_if_parked, try_write)
from v2sync.transport.internet.hub import Listening, Transport
from v2sync.transport.internet.tcp import dial_tcp, listen_tcp
from v2sync.transport.internet.tls import ClientTls, ServerTls
from v2sync.transport.internet.websocket.frames import (CLOSE_NORMAL, OP_BINARY, OP_PONG,
                                                        FrameDecoder, FrameError,
                                                        encode_close, frame_parts)
from v2sync.transport.internet.websocket.handshake import (MAX_HANDSHAKE, NET_HTTP_400,
                                                           WsRequest, answer_upgrade, go_date,
                                                           build_request, new_key,
                                                           parse_request, parse_response,
                                                           request_path)

# websocket/hub.go: the HTTP server's ReadHeaderTimeout and the upgrader's handshake
# timeout are both 4 s; the dialer's HandshakeTimeout is 8 s.
SERVER_HANDSHAKE_TIMEOUT = 4.0
CLIENT_HANDSHAKE_TIMEOUT = 8.0
# v2sync never buffers a data frame (payload streams out), so this only refuses absurd
# lengths; gorilla sets no read limit for v2ray either.
MAX_FRAME = 1 << 40
# Raw reads: a frame header plus a useful payload even when the relay asks for little.
MIN_RAW_READ = 4096
# Payloads from this size go out beside their frame header instead of being copied behind
# it: bulk relays write frames of up to 1 MiB, and that copy cost ~7% of WS+TLS bulk
# throughput (tools/bench.py ws). Smaller frames stay one buffer: over TLS, one record.
GATHER_MIN_PAYLOAD = 64 * 1024


class WsConnection(WrappedConnection):
    def __init__(self, inner: Connection, client: bool, pending: bytes = b"",
                 remote: Optional[Destination] = None):
        super().__init__(inner, remote=remote)
        self._client = client
        self._decoder = FrameDecoder(expect_masked=not client, max_frame=MAX_FRAME)
        self._raw_pending = pending  # bytes after the handshake: frames, not payload
        self._write_lock = threading.Lock()
        self._eof = False
        self._close_sent = False
        self._upgrade: Optional[FinishOnFirstUse] = None  # a client upgrade still to do

    def upgrade_on_first_use(self, request: bytes, key: str, deadline: float) -> None:
        """Client: the first read or write sends the upgrade ``request`` and reads the
        server's 101 before anything else goes out (RFC 6455 §4.1). Over TLS, the request
        then finishes the TLS handshake too, so the caller's own request is built while
        the server computes its TLS answer."""
        def upgrade() -> None:
            self.inner.write(request)
            reader = HandshakeReader(self.inner, deadline, MAX_HANDSHAKE)
            reader.parse(lambda buf: parse_response(buf, key))
            self._raw_pending = reader.consume(len(reader.buf))
        self._upgrade = FinishOnFirstUse(self.sock, upgrade)

    def _upgraded(self) -> bool:
        return self._upgrade is None or self._upgrade.done

    def recv(self, max_bytes: int) -> bytes:
        if self._upgrade is not None:
            self._upgrade.run()
        while not self._pending and not self._eof:
            raw = self._raw_pending or self.inner.recv(max(max_bytes, MIN_RAW_READ))
            self._raw_pending = b""
            if not raw:
                self._eof = True  # the peer closed without a close frame
                break
            self._pending = self._handle(self._feed(raw))
            if not self._pending and not self._eof:
                hand_back_if_parked(self.sock, "websocket frames without payload")
        return super().recv(max_bytes) if self._pending else b""

    def _feed(self, raw: bytes) -> List[tuple]:
        """The decoder's events; a frame it refuses gets gorilla's close frame first (a
        protocol error names the problem), then the error ends the connection."""
        try:
            return self._decoder.feed(raw)
        except FrameError as e:
            self._eof = True
            self._send_close(e.close_code or CLOSE_NORMAL, e.reason.encode())
            raise

    def _handle(self, events: List[tuple]) -> bytes:
        data = []
        for event in events:
            kind = event[0]
            if kind == "data":
                data.append(event[1])
            elif kind == "ping":
                self._send_frame(*frame_parts(OP_PONG, event[1], self._mask()))
            elif kind == "close":  # echoed with its code; none (1005) as an empty one
                self._eof = True
                self._send_close(event[1])
        return b"".join(data)

    def sendall(self, data: bytes) -> None:
        self._send_frame(*frame_parts(OP_BINARY, data, self._mask()), data_frame=True)

    def _mask(self) -> Optional[bytes]:
        return os.urandom(4) if self._client else None

    def _send_frame(self, head: bytes, body: bytes = b"", data_frame: bool = False) -> None:
        if self._upgrade is not None:
            self._upgrade.run()
        with self._write_lock:
            # Checked under the lock: the reader thread may have sent a close frame since,
            # and no data frame may follow one (RFC 6455 §5.5.1).
            if data_frame and self._close_sent:
                raise BrokenPipeError("websocket already closed")
            if len(body) < GATHER_MIN_PAYLOAD:
                self.inner.sendall(head + body)
            else:
                self.inner.sendall_parts((head, body))

    def _send_close(self, code: Optional[int], reason: bytes = b"") -> None:
        if self._close_sent:
            return
        self._close_sent = True
        try:
            self._send_frame(encode_close(code, reason if code != CLOSE_NORMAL else b"",
                                          self._mask()))
        except OSError:
            pass  # the peer is gone: nothing left to tell it

    def abort(self) -> None:
        """A relay's end (its timer, the other side gone) comes here first: the close frame
        goes before the socket is shut down, as 4.34's connection ``Close`` sends one (it
        failed after the shutdown, so the peer saw an abnormal closure, 1006; found by a
        review)."""
        self._goodbye()
        super().abort()

    def _release(self) -> None:
        self._goodbye()
        super()._release()

    def _goodbye(self) -> None:
        """Say goodbye with a close frame if the socket takes it at once. Before the
        server's 101 there is no WebSocket yet to close."""
        if not self._close_sent and self._upgraded() and self._write_lock.acquire(False):
            try:
                self._close_sent = True
                self.inner.send_now(encode_close(1000, b"", self._mask()))
            finally:
                self._write_lock.release()

    def send_now(self, data: bytes) -> None:
        """Unframed bytes have no place on a WebSocket: dropped (see ``Connection``)."""


def ws_accept(conn: Connection, settings: StreamSettings,
              deadline: float) -> Handshake[WsConnection]:
    """Requests until one is upgraded. A refused one (a wrong path, not an upgrade) is
    answered and, as net/http keeps the connection, the next may come within another
    SERVER_HANDSHAKE_TIMEOUT. Bytes behind the upgrade request close the connection
    unanswered, as gorilla does ("client sent data before handshake is complete")."""
    reader = HandshakeReader(conn, deadline, MAX_HANDSHAKE)
    while True:
        request = yield from _read_request(conn, reader)
        answer = answer_upgrade(request, settings.ws.path)
        if answer.upgraded:
            if reader.buf:
                raise RemoteProtocolError("websocket: client sent data before the handshake "
                                          "was complete")
            conn.write(answer.reply)
            return WsConnection(conn, client=False, remote=_forwarded_for(
                request.header("x-forwarded-for"), conn.remote))
        try_write(conn, answer.reply)
        if not answer.keep_alive:
            raise RemoteProtocolError(f"websocket upgrade refused: {answer.reply[:40]!r}")
        reader.deadline = time.monotonic() + SERVER_HANDSHAKE_TIMEOUT


def answer_h2_steps(conn: Connection, path: str, deadline: float) -> Handshake[None]:
    """Refuse each request of a client that negotiated HTTP/2 as 4.34's net/http does
    (``h2answer``), until it goes, stays idle past SERVER_HANDSHAKE_TIMEOUT or has asked
    MAX_REQUESTS times; then the connection ends (this always raises)."""
    from v2sync.transport.internet.websocket.h2answer import H2Refusals
    refusals = H2Refusals(path, go_date)
    reader = HandshakeReader(conn, deadline, MAX_HANDSHAKE)
    try_write(conn, refusals.pending())  # the server's SETTINGS
    while not refusals.done:
        yield from reader.fill_steps()
        try:
            out = refusals.receive(reader.consume(len(reader.buf)))
        except RemoteProtocolError:
            try_write(conn, refusals.pending())  # the GOAWAY h2 owes a broken client
            raise
        try_write(conn, out)
        reader.deadline = time.monotonic() + SERVER_HANDSHAKE_TIMEOUT
    raise RemoteProtocolError("websocket: a client over HTTP/2 asked too often")


def _read_request(conn: Connection, reader: HandshakeReader) -> Handshake[WsRequest]:
    """One request head; net/http's own errors are answered, and end the connection."""
    try:
        return (yield from reader.parse_steps(parse_request))
    except (HandshakeTimeout, HandshakeClosed):  # a HandshakeClosed is a ProtocolError too
        # net/http answers a head cut short by its timeout, or by the client's end
        # (ErrUnexpectedEOF); silence gets nothing
        if reader.buf:
            try_write(conn, NET_HTTP_400)
        raise
    except ProtocolError as e:
        if e.reply:
            try_write(conn, e.reply)
        raise


def _forwarded_for(value: Optional[str], remote: Destination) -> Destination:
    """hub.go: the first X-Forwarded-For entry, if it is an IP, becomes the source."""
    if not value:
        return remote
    address = Address.parse(value.split(",")[0].strip())
    return Destination(address, 0) if address.is_ip else remote


def ws_dial(conn: Connection, target: Destination, settings: StreamSettings, secure: bool,
            deadline: float) -> WsConnection:
    default_port = 443 if secure else 80
    host = str(target.address) if target.port == default_port else target.host_port()
    key = new_key()
    ws = WsConnection(conn, client=True)
    ws.upgrade_on_first_use(build_request(host, settings.ws.path, key,
                                          dict(settings.ws.headers)), key, deadline)
    return ws


class WebSocketTransport(Transport):
    client_alpn = ("http/1.1",)  # dialer.go: WithNextProto("http/1.1")

    def listen(self, address: Address, port: int, settings: StreamSettings) -> Listening:
        return listen_tcp(address, port, settings)

    handshake_in_proxy = False  # net/http's server upgrades: its failures are no proxy's

    def accept_deadline(self, handshake_timeout: float) -> float:
        return time.monotonic() + SERVER_HANDSHAKE_TIMEOUT

    def accept_steps(self, conn: Connection, settings: StreamSettings,
                     tls: Optional[ServerTls], deadline: float) -> Handshake[Connection]:
        if tls is not None:  # hub.go serves ws with net/http, which answers plaintext HTTP
            tls_conn = yield from tls.wrap_steps(conn, deadline, answer_plain_http=True)
            if tls_conn.alpn == "h2":  # net/http speaks HTTP/2 then: nothing upgrades
                yield from answer_h2_steps(tls_conn, settings.ws.path, deadline)
            conn = tls_conn
        return (yield from ws_accept(conn, settings, deadline))

    def dial(self, target: Destination, ip_dest: Destination, settings: StreamSettings,
             tls: Optional[ClientTls], timeout: float, source: Optional[Address]) -> Connection:
        try:  # gorilla parses the URL before it dials: a path it cannot parse dials nothing
            request_path(settings.ws.path)
        except LocalProtocolError as e:
            raise TransportError(str(e)) from None
        conn = dial_tcp(ip_dest, timeout, source, settings.sockopt)
        deadline = time.monotonic() + CLIENT_HANDSHAKE_TIMEOUT
        try:
            if tls is not None:
                conn = tls.wrap(conn, target, deadline, ip_as_name=True)
            return ws_dial(conn, target, settings, tls is not None, deadline)
        except BaseException:
            conn.close()
            raise


TRANSPORTS.add("websocket", WebSocketTransport())
