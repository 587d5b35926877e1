"""A connection that counts its bytes (v2ray ``transport/internet/connection.go``,
``StatCouterConnection``): bytes read go to one counter, bytes written to another.

Inbound handlers wrap an accepted connection with (uplink, downlink); an outbound's
``StreamClient`` wraps each dialed one with (downlink, uplink). Either counter may be None
(its policy switch is off). It sits above TLS and WebSocket, as 4.34's does, so it counts
what the proxy protocol reads and writes, its own headers included.
"""
from __future__ import annotations

from typing import Callable, Sequence

from v2sync.transport.internet.conn import Connection, WrappedConnection


def _ignore(n: int) -> None:
    pass


def adder(counter) -> Callable[[int], None]:
    """``counter.add``, or a no-op for a counter that is off (None): picked once, so a
    relay loop makes no None test per chunk."""
    return counter.add if counter is not None else _ignore


class CountingConnection(WrappedConnection):
    def __init__(self, inner: Connection, read_counter=None, write_counter=None):
        super().__init__(inner)
        self._count_read = adder(read_counter)
        self._count_written = adder(write_counter)

    def recv(self, max_bytes: int) -> bytes:
        data = self.inner.recv(max_bytes)
        self._count_read(len(data))
        return data

    def sendall(self, data: bytes) -> None:
        self.inner.sendall(data)
        self._count_written(len(data))

    def sendall_parts(self, parts: Sequence[bytes]) -> None:
        self.inner.sendall_parts(parts)  # keeps the layer below's gather write
        self._count_written(sum(map(len, parts)))


def counted(conn: Connection, read_counter=None, write_counter=None) -> Connection:
    """``conn`` itself when neither counter is on, else wrapped."""
    if read_counter is None and write_counter is None:
        return conn
    return CountingConnection(conn, read_counter, write_counter)

