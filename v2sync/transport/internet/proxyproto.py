"""``acceptProxyProtocol``: a PROXY v1/v2 header before anything else on an accepted
connection (v2ray 4.34 wraps its listener in go-proxyproto with the REQUIRE policy: a
connection without a valid header fails). The header's source becomes the connection's
``remote``, so routing ``source`` rules and access logs see the real client.

The header is read exactly, never past its end: the bytes behind it belong to the next
layer, and TLS reads the socket itself. So each round peeks at what has arrived, and
either takes exactly the header or, when it is still incomplete, takes everything peeked
(all of it header) and waits for more. The codec is ``common.protocol.proxy_protocol``.
"""
from __future__ import annotations

import contextlib
import socket
from typing import Optional

from v2sync.common.errors import HandshakeTimeout, RemoteProtocolError, TransportError
from v2sync.common.net import Destination
from v2sync.common.protocol.proxy_protocol import parse_header
from v2sync.transport.internet.conn import Connection, Handshake, WrappedConnection, arm_deadline

# A v2 header may carry TLVs up to 64 KiB; anything past this is not worth reading.
MAX_PROXY_HEADER = 4096


class ProxiedConnection(WrappedConnection):
    """The accepted connection, with the ends the PROXY header named."""

    def __init__(self, inner: Connection, source: Optional[Destination],
                 destination: Optional[Destination]):
        super().__init__(inner, remote=source)
        self._named_local = destination

    @property
    def local(self) -> Destination:
        return self._named_local or self.inner.local


def accept_proxy_header(conn: Connection, deadline: float) -> Handshake[Connection]:
    taken = b""
    while True:
        peeked = yield from _peek(conn, deadline, MAX_PROXY_HEADER - len(taken))
        try:
            parsed = parse_header(taken + peeked)
        except RemoteProtocolError:
            # Read what came, as go-proxyproto's buffered reader has: closed with nothing
            # unread, the connection ends with a FIN, as 4.34's does, not a reset. (Bytes
            # still on their way may yet make it a reset; the header's error is the one told.)
            with contextlib.suppress(TransportError, RemoteProtocolError):
                _take(conn, len(peeked))
            raise
        if parsed is not None:
            header, used = parsed
            _take(conn, used - len(taken))
            return ProxiedConnection(conn, header.source, header.destination)
        if len(taken) + len(peeked) >= MAX_PROXY_HEADER:
            raise RemoteProtocolError(f"PROXY header longer than {MAX_PROXY_HEADER} bytes")
        taken += _take(conn, len(peeked))


def _peek(conn: Connection, deadline: float, size: int) -> Handshake[bytes]:
    while True:
        if not arm_deadline(conn.sock, deadline):
            raise HandshakeTimeout(f"PROXY header from {conn.remote} timed out")
        try:
            data = conn.sock.recv(size, socket.MSG_PEEK)
        except BlockingIOError:
            yield deadline
            continue
        except socket.timeout as e:
            raise HandshakeTimeout(f"PROXY header from {conn.remote} timed out") from e
        except OSError as e:
            raise TransportError(f"PROXY header read from {conn.remote} failed: {e}") from e
        if not data:
            raise RemoteProtocolError("connection closed before its PROXY header")
        return data


def _take(conn: Connection, size: int) -> bytes:
    """Consume ``size`` bytes that a peek has shown are there."""
    data = b""
    while len(data) < size:
        try:
            chunk = conn.sock.recv(size - len(data))
        except OSError as e:
            raise TransportError(f"PROXY header read from {conn.remote} failed: {e}") from e
        if not chunk:
            raise RemoteProtocolError("connection closed inside its PROXY header")
        data += chunk
    return data
