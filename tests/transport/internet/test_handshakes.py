"""The handshake selector (transport/internet/handshakes.py) with real loopback sockets.

A toy handshake reads a 3-byte greeting through ``HandshakeReader.parse_steps``; the tests
check that it is resumed as bytes trickle in, that its deadline is thrown into it, that
close() runs every parked handshake's cleanup, that a failing step costs only its own
connection, and that the completed connection is served by a thread in blocking mode.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import List, Optional

import pytest

from v2sync.common.errors import HandshakeTimeout, TransportError
from v2sync.common.task import ThreadGroup
from v2sync.transport.internet.conn import Connection, HandshakeReader, complete
from v2sync.transport.internet.handshakes import Handoff, HandshakeSelector

GREETING = b"hi!"
TIMEOUT = 5.0


def _greeting(buf: bytes):
    return (bytes(buf[:3]), 3) if len(buf) >= 3 else None


class Served(Handoff):
    def __init__(self, conn: Connection, greeting: bytes, log: "Events"):
        self.conn, self.greeting, self.log = conn, greeting, log

    def serve(self) -> None:
        blocking = self.conn.sock.gettimeout() != 0.0
        self.conn.sendall(b"got " + self.greeting)
        self.log.add(("served", self.greeting, blocking, threading.current_thread().name))
        self.conn.close()

    def drop(self) -> None:
        self.conn.close()


class Events:
    def __init__(self) -> None:
        self.items: List[tuple] = []
        self.changed = threading.Condition()

    def add(self, item: tuple) -> None:
        with self.changed:
            self.items.append(item)
            self.changed.notify_all()

    def wait_for(self, kind: str, count: int = 1) -> List[tuple]:
        with self.changed:
            assert self.changed.wait_for(
                lambda: len([i for i in self.items if i[0] == kind]) >= count, TIMEOUT), self.items
            return [i for i in self.items if i[0] == kind]


class ToyServer:
    """A listener whose connections must send ``GREETING`` within ``deadline`` seconds."""

    def __init__(self, deadline: float = TIMEOUT, fail_on: Optional[bytes] = None):
        self.events = Events()
        self.deadline = deadline
        self.fail_on = fail_on
        self.workers = ThreadGroup("test-handshakes")
        self.selector = HandshakeSelector(self.workers, "toy")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.selector.add_listener(self.sock, self._start, "toy")
        self.selector.start()

    def _start(self, sock: socket.socket):
        return self._handshake(Connection(sock))

    def _handshake(self, conn: Connection):
        reader = HandshakeReader(conn, time.monotonic() + self.deadline, 64)
        try:
            greeting = yield from reader.parse_steps(_greeting)
            if greeting == self.fail_on:
                raise ValueError("a bug in a handshake step")
            return Served(conn, greeting, self.events)
        except HandshakeTimeout:
            self.events.add(("timed out",))
            conn.close()
            return None
        except GeneratorExit:
            self.events.add(("closed while parked",))
            conn.close()
            raise

    def close(self) -> None:
        self.selector.close()
        assert self.selector.wait_closed(TIMEOUT)
        assert self.workers.join(TIMEOUT)
        self.workers.shutdown(TIMEOUT)


@pytest.fixture
def server():
    toy = ToyServer()
    yield toy
    toy.close()


def _client(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def test_a_trickled_greeting_is_resumed_byte_by_byte_then_served_blocking(server):
    with _client(server.port) as client:
        for byte in GREETING:
            client.sendall(bytes([byte]))
            time.sleep(0.05)  # each byte arrives on its own: one resume each
        assert client.recv(64) == b"got " + GREETING
    (_, greeting, blocking, _), = server.events.wait_for("served")
    assert greeting == GREETING and blocking


def test_silent_connections_wait_without_a_thread(server):
    clients = [_client(server.port) for _ in range(200)]
    try:
        deadline = time.monotonic() + TIMEOUT
        while server.selector.parked_count() < len(clients):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert len(server.workers.live()) == 1  # only the thread waiting in select
        with _client(server.port) as late:  # a ready client is served meanwhile
            late.sendall(GREETING)
            assert late.recv(64) == b"got " + GREETING
    finally:
        for client in clients:
            client.close()


def test_the_deadline_is_thrown_into_a_parked_handshake():
    toy = ToyServer(deadline=0.3)
    try:
        with _client(toy.port) as client:
            client.sendall(b"h")
            started = time.monotonic()
            toy.events.wait_for("timed out")
            assert client.recv(64) == b""  # closed by the handshake's own cleanup
            assert time.monotonic() - started < TIMEOUT
    finally:
        toy.close()


def test_close_runs_each_parked_handshakes_cleanup_and_closes_the_listener():
    toy = ToyServer()
    clients = [_client(toy.port) for _ in range(3)]
    try:
        deadline = time.monotonic() + TIMEOUT
        while toy.selector.parked_count() < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        toy.close()
        assert len(toy.events.wait_for("closed while parked", 3)) == 3
        for client in clients:
            assert client.recv(64) == b""
        with pytest.raises(ConnectionRefusedError):
            _client(toy.port)
    finally:
        for client in clients:
            client.close()


def test_remove_listener_returns_with_the_port_closed(server):
    # The API's RemoveInbound answers once the port is closed: a connect right after is
    # refused, never taken by a listener the leader has not closed yet.
    for _ in range(20):
        toy = ToyServer()
        try:
            assert toy.selector.remove_listener(toy.sock, TIMEOUT)
            with pytest.raises(ConnectionRefusedError):
                _client(toy.port)
        finally:
            toy.close()


def test_a_failing_step_ends_only_its_connection(caplog):
    toy = ToyServer(fail_on=b"bad")
    try:
        with caplog.at_level(logging.ERROR, "v2sync.transport.internet.handshakes"):
            with _client(toy.port) as bad:
                bad.sendall(b"bad")
                assert bad.recv(64) == b""
        assert "handshake step failed" in caplog.text
        with _client(toy.port) as good:
            good.sendall(GREETING)
            assert good.recv(64) == b"got " + GREETING
    finally:
        toy.close()


def test_complete_refuses_steps_that_would_wait():
    def waits():
        yield 1.0
        return "never"

    with pytest.raises(TransportError, match="asked to wait"):
        complete(waits())


def test_complete_returns_what_steps_that_never_wait_return():
    def immediate():
        return "done"
        yield  # a generator that finishes at once

    assert complete(immediate()) == "done"
