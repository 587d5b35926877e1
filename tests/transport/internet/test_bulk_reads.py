"""Batched bulk reads (``conn.recv_waiting``) over real loopback sockets.

A TLS client's raw relay read (``batched``) of ``BULK_READ`` bytes or more, on a reader
armed to park, that brings
``BULK_LOWAT`` bytes or more raises the socket's SO_RCVLOWAT to that, and the next bulk read
waits (``BULK_WAIT_MS`` at most) for that much. What a read returns is always the stream's
bytes, in order; the mark is back at one byte after a short read and before any read that
may wait long (a small read, or a bulk read that found nothing), because a parked reader's
epoll reads the mark too and would sleep through a short answer."""
from __future__ import annotations

import random
import socket
import threading
import time
from typing import List, Tuple

import pytest

from v2sync.common.net import Address, Destination
from v2sync.transport.internet.conn import BULK_LOWAT, BULK_READ, Connection, recv_waiting

TIMEOUT = 10.0
PARK_TIMEOUT = 0.05


def _pair() -> Tuple[socket.socket, socket.socket]:
    """A connected pair whose accepted end can queue a few bulk reads' worth."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    return client, server


class BatchedConnection(Connection):
    """Reads as a TLS client's raw reads do (``tls.TlsConnection._recv_raw``)."""

    def recv(self, max_bytes: int) -> bytes:
        return recv_waiting(self, max_bytes, batched=True)


def _armed(sock: socket.socket) -> Connection:
    conn = BatchedConnection(sock)
    assert conn.arm_read_timeout(PARK_TIMEOUT)
    return conn


def _lowat(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def _queued(sock: socket.socket, size: int) -> None:
    """Wait until ``size`` bytes wait in ``sock``'s receive queue (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while len(sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)) < size:
        assert time.monotonic() < deadline, "the bytes never arrived"
        time.sleep(0.005)


def _raised(sender: socket.socket, receiver: Connection) -> bytes:
    """A bulk read that leaves the mark raised; returns what it read."""
    payload = random.Random(1).randbytes(BULK_LOWAT * 3)
    sender.sendall(payload)
    _queued(receiver.sock, len(payload))
    assert receiver.read(BULK_READ) == payload
    assert _lowat(receiver.sock) == BULK_LOWAT
    return payload


def test_a_bulk_read_takes_everything_queued_and_keeps_the_mark() -> None:
    client, server = _pair()
    with client, server:
        _raised(client, _armed(server))


@pytest.mark.parametrize("flowing", [True, False], ids=["after-a-raised-mark", "first-read"])
def test_a_short_bulk_read_returns_what_came_with_the_mark_at_one_byte(flowing: bool) -> None:
    """After a raised mark the short read lowers it; as a first read it never raises it."""
    client, server = _pair()
    with client, server:
        conn = _armed(server)
        if flowing:
            _raised(client, conn)
        client.sendall(b"x" * 100)
        _queued(server, 100)
        assert conn.read(BULK_READ) == b"x" * 100
        assert _lowat(server) == 1


def test_a_bulk_read_that_finds_nothing_lowers_the_mark_before_it_waits() -> None:
    client, server = _pair()
    with client, server:
        conn = _armed(server)
        _raised(client, conn)
        assert conn.read_or_none(BULK_READ) is None  # the park timeout, with nothing
        assert _lowat(server) == 1
        client.sendall(b"tail")
        assert conn.read(BULK_READ) == b"tail"
        assert _lowat(server) == 1  # a stream that idled starts again unbatched


def test_a_small_read_lowers_the_mark_first() -> None:
    client, server = _pair()
    with client, server:
        conn = _armed(server)
        _raised(client, conn)
        client.sendall(b"small")
        assert conn.read(4096) == b"small"
        assert _lowat(server) == 1


def test_the_peer_closing_ends_a_bulk_read() -> None:
    client, server = _pair()
    with server:
        conn = _armed(server)
        _raised(client, conn)
        client.sendall(b"last")
        client.close()
        assert conn.read(BULK_READ) == b"last"
        assert conn.read(BULK_READ) == b""


@pytest.mark.parametrize("make", [BatchedConnection, Connection], ids=["unarmed", "plain"])
def test_an_unarmed_or_plain_reader_is_not_batched(make) -> None:
    client, server = _pair()
    with client, server:
        conn = make(server)
        if make is Connection:
            assert conn.arm_read_timeout(PARK_TIMEOUT)  # armed, but not a batched reader
        client.sendall(b"y" * (BULK_LOWAT * 2))
        _queued(server, BULK_LOWAT * 2)
        assert conn.read(BULK_READ) == b"y" * (BULK_LOWAT * 2)
        assert _lowat(server) == 1


def test_a_unix_stream_reads_as_before() -> None:
    """A unix socket (the domainsocket transport) takes the mark, but its poll does not
    read it: a bulk read returns at once with what is there."""
    a, b = socket.socketpair()
    with a, b:
        conn = BatchedConnection(b, remote=Destination(Address.parse("127.0.0.1"), 1))
        assert conn.arm_read_timeout(PARK_TIMEOUT)
        a.sendall(b"z" * 100)
        assert conn.read(BULK_READ) == b"z" * 100


def test_a_paced_stream_arrives_whole_whatever_the_read_sizes() -> None:
    """Writes of every size with pauses, reads alternating bulk and small: the bytes that
    come out are the bytes that went in."""
    rng = random.Random(7)
    payload = rng.randbytes(3 * 1024 * 1024)
    client, server = _pair()
    errors: List[BaseException] = []

    def send() -> None:
        try:
            view, pos = memoryview(payload), 0
            while pos < len(view):
                size = rng.choice((1, 100, 2048, 70_000, 300_000))
                client.sendall(view[pos:pos + size])
                pos += size
                if rng.random() < 0.05:
                    time.sleep(0.003)  # a pause longer than a bulk read waits
        except BaseException as e:  # reported below
            errors.append(e)

    with client, server:
        conn = _armed(server)
        thread = threading.Thread(target=send)
        thread.start()
        got: List[bytes] = []
        total, reads = 0, 0
        deadline = time.monotonic() + TIMEOUT * 3
        while total < len(payload) and time.monotonic() < deadline:
            chunk = conn.read_or_none(BULK_READ if reads % 4 else 4096)
            reads += 1
            if chunk:
                got.append(chunk)
                total += len(chunk)
        thread.join(TIMEOUT)
        assert not thread.is_alive() and not errors, errors
        assert b"".join(got) == payload
