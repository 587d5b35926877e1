"""The TCP HTTP-header disguise on a live connection (v2ray ``headers/http/http.go`` Conn).

The client's first write carries a fake request head and its first read strips the fake
response head; the server reads and checks the request head while accepting, and its first
write carries the response head. After that, bytes pass through untouched.
"""
from __future__ import annotations

import threading

from v2sync.common.errors import ProtocolError
from v2sync.transport.internet.conn import (Connection, Handshake, HandshakeReader,
                                            WrappedConnection, try_write)
from v2sync.transport.internet.headers.http import (BAD_REQUEST, HEAD_LIMIT, HeadScan,
                                                    HttpHeaderConfig, dated,
                                                    parse_request_head, parse_response_head,
                                                    request_bytes, response_bytes)


class _FirstWriteHead(WrappedConnection):
    """Prepends ``head`` to the first write only."""

    def __init__(self, inner: Connection, head: bytes, pending: bytes = b""):
        super().__init__(inner, pending)
        self._head = head
        self._head_lock = threading.Lock()

    def sendall(self, data: bytes) -> None:
        if self._head:
            with self._head_lock:
                head, self._head = self._head, b""
            data = head + data
        self.inner.sendall(data)

    def send_now(self, data: bytes) -> None:
        """Once the head is out the stream is plain; before, bytes without it are
        dropped (see ``Connection``)."""
        if not self._head:
            self.inner.send_now(data)


class HeaderServerConnection(_FirstWriteHead):
    """The response head goes out with the first write. A connection that ends before
    any write (a bad inbound greeting, an upstream that closed without a word) gets 4.34's
    400 instead, as http.go's ``Conn.Close`` sends one when the head is still unsent;
    nothing else was ever written, so the reply fits the empty send buffer at once."""

    def shutdown_write(self) -> None:
        self._answer_unsent()
        super().shutdown_write()

    def abort(self) -> None:  # an inactivity timer's end: 4.34 closes, and so answers
        self._answer_unsent()
        super().abort()

    def _release(self) -> None:
        self._answer_unsent()
        super()._release()

    def _answer_unsent(self) -> None:
        with self._head_lock:
            if not self._head:
                return
            self._head = b""
        # Never waits: an abort comes from the timer wheel's thread, and over TLS a reader
        # answering a peer that does not read may hold the sending side (found by a review).
        self.inner.send_now(dated(BAD_REQUEST))


class HeaderClientConnection(_FirstWriteHead):
    def __init__(self, inner: Connection, config: HttpHeaderConfig):
        super().__init__(inner, request_bytes(config))
        self._awaiting_head = True

    def recv(self, max_bytes: int) -> bytes:
        if self._awaiting_head:
            self._skip_head(max_bytes)
        return super().recv(max_bytes)

    def _skip_head(self, max_bytes: int) -> None:
        buf = bytearray()
        scan = HeadScan()
        while True:
            data = self.inner.recv(max(max_bytes, 4096))
            if not data:
                return  # closed before answering: plain EOF, as Go's reader sees it
            buf += data
            used = parse_response_head(bytes(buf), scan)
            if used is not None:
                self._awaiting_head = False
                self._pending = bytes(buf[used:])
                return


def accept_http_header(conn: Connection, config: HttpHeaderConfig,
                       deadline: float) -> Handshake[Connection]:
    """Read and check the request head; a wrong path gets 4.34's 404, garbage its 400."""
    # HEAD_LIMIT: the codec itself answers 400 at 4.34's real limit (10,224 bytes).
    reader = HandshakeReader(conn, deadline, HEAD_LIMIT + 1)
    scan = HeadScan()
    try:
        yield from reader.parse_steps(lambda buf: parse_request_head(buf, config, scan))
    except ProtocolError as e:
        if e.reply:
            try_write(conn, dated(e.reply))  # 4.34's error replies carry a Date
        raise
    return HeaderServerConnection(conn, response_bytes(config), reader.consume(len(reader.buf)))
