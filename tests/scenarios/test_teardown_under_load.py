"""Teardown at scale and SIGTERM under load (issue 14, parts 2 and 9).

A real ``v2sync run`` holds a few hundred SOCKS5 -> freedom connections to an origin that
runs in this test's own selector loop, with the clients; the proxy is its own process, as
in tools/massclose_probe.py, which measures the same at 2,000 connections. Timings are
reported (``record_property`` and the captured output), never asserted tightly: a bound of
10 s only tells a hang from a slow machine.
"""
from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from typing import Callable, Dict, Iterator, List

from scenarios.helpers_scenarios import make_config, socks5_tunnel, socks_inbound
from support.peers import free_port
from support.resources import process_thread_count

CONNECTIONS = 300
PAYLOAD = bytes(range(256)) * 4  # 1 KiB, echoed back and forth
HANG_LIMIT = 10.0  # seconds: a hang check, not a performance target
BUSY_SECONDS = 0.5
SELECT_TIMEOUT = 0.05
MIN_ROUNDS = 1  # echoes each connection completes before the SIGTERM
THREAD_SLACK = 40  # parked pool workers (32) and the few threads a process keeps


class _EchoLoop:
    """Clients and the origin in one selector loop: every client sends 1 KiB, the origin
    echoes it, and a client that has its echo back sends the next one (while ``busy``)."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.origin = socket.create_server(("127.0.0.1", 0), backlog=2 * CONNECTIONS)
        self.origin.setblocking(False)
        # The proxy may answer a CONNECT before its dial completes (SOCKS as in 4.34), so
        # the origin accepts whenever a connection arrives.
        self.selector.register(self.origin, selectors.EVENT_READ, lambda _: self.accept_all())
        self.clients: Dict[socket.socket, List[int]] = {}  # -> [bytes owed, rounds done]
        self.busy = True

    @property
    def port(self) -> int:
        return self.origin.getsockname()[1]

    def add_client(self, sock: socket.socket) -> None:
        self.clients[sock] = [len(PAYLOAD), 0]
        sock.sendall(PAYLOAD)
        self.selector.register(sock, selectors.EVENT_READ, self._client_readable)

    def accept_all(self) -> None:
        while True:
            try:
                conn, _ = self.origin.accept()
            except BlockingIOError:
                return
            conn.setblocking(True)
            conn.settimeout(5.0)
            self.selector.register(conn, selectors.EVENT_READ, self._origin_readable)

    def pump(self, until: Callable[[], bool], limit: float) -> float:
        """Run the loop until ``until()`` or ``limit`` seconds; returns the seconds taken."""
        started = time.monotonic()
        while not until() and time.monotonic() - started < limit:
            for key, _ in self.selector.select(SELECT_TIMEOUT):
                key.data(key.fileobj)
        return time.monotonic() - started

    def _origin_readable(self, conn: socket.socket) -> None:
        data = self._recv(conn)
        if data:
            conn.sendall(data)

    def _client_readable(self, sock: socket.socket) -> None:
        data = self._recv(sock)
        state = self.clients[sock]
        state[0] -= len(data)
        if state[0] <= 0 and data:
            state[1] += 1
            if self.busy:
                state[0] += len(PAYLOAD)
                sock.sendall(PAYLOAD)

    def _recv(self, sock: socket.socket) -> bytes:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(sock)
            sock.close()
        return data

    def close_clients(self) -> None:
        """Close every client at once (unregistered first: a new socket may reuse the fd)."""
        for sock in self.clients:
            if sock.fileno() >= 0:
                self.selector.unregister(sock)
                sock.close()

    def open_clients(self) -> int:
        return sum(1 for sock in self.clients if sock.fileno() >= 0)

    def min_rounds(self) -> int:
        return min(state[1] for state in self.clients.values())

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # the origin's listener among them
        self.selector.close()


@contextlib.contextmanager
def _echo_loop() -> Iterator[_EchoLoop]:
    loop = _EchoLoop()
    try:
        yield loop
    finally:
        loop.close()


def _open_busy(loop: _EchoLoop, proxy_port: int, stack: contextlib.ExitStack) -> None:
    for _ in range(CONNECTIONS):
        loop.add_client(stack.enter_context(socks5_tunnel(proxy_port, "127.0.0.1", loop.port)))
    loop.pump(lambda: loop.min_rounds() >= MIN_ROUNDS, HANG_LIMIT)
    assert loop.min_rounds() >= MIN_ROUNDS, "not every connection relayed an echo"
    loop.pump(lambda: False, BUSY_SECONDS)


def _config(port: int) -> dict:
    return make_config([socks_inbound(port=port)], log={"access": "none", "loglevel": "warning"})


def test_sigterm_with_busy_connections_exits_zero_in_bounded_time(v2sync_process,
                                                                   record_property) -> None:
    port = free_port()
    process = v2sync_process(_config(port))
    with _echo_loop() as loop, contextlib.ExitStack() as stack:
        _open_busy(loop, port, stack)
        started = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        elapsed = loop.pump(lambda: process.returncode is not None, HANG_LIMIT)
        record_property("sigterm_exit_seconds", round(elapsed, 2))
        print(f"SIGTERM with {CONNECTIONS} busy connections: exit after {elapsed:.2f} s")
        assert process.returncode == 0, process.log_tail()
        assert elapsed < HANG_LIMIT
        # Every client connection was closed by the proxy's exit (nothing half-open).
        loop.pump(lambda: loop.open_clients() == 0, HANG_LIMIT - (time.monotonic() - started))
        assert loop.open_clients() == 0


def test_a_mass_close_leaves_the_proxy_answering_and_its_threads_at_baseline(
        v2sync_process, record_property) -> None:
    port = free_port()
    process = v2sync_process(_config(port))
    with _echo_loop() as loop, contextlib.ExitStack() as stack:
        with socks5_tunnel(port, "127.0.0.1", loop.port):  # a warm-up connection
            pass
        time.sleep(2.5)  # the warm-up's parked workers expire (task.IDLE_TIMEOUT)
        baseline = process_thread_count(process.pid)
        _open_busy(loop, port, stack)
        loop.busy = False
        loop.pump(lambda: False, BUSY_SECONDS)  # the last echoes come back: now idle
        loop.close_clients()  # every client at once
        closed = time.monotonic()
        fresh = _fresh_request(port, loop)
        record_property("fresh_request_ms", round(fresh * 1000, 1))
        settled = loop.pump(lambda: process_thread_count(process.pid) <= baseline + THREAD_SLACK,
                            HANG_LIMIT)
        record_property("threads_settled_seconds", round(settled, 2))
        print(f"{CONNECTIONS} connections closed at once: a fresh request took "
              f"{fresh * 1000:.1f} ms, threads back within {settled:.2f} s")
        assert time.monotonic() - closed < 2 * HANG_LIMIT
        assert process_thread_count(process.pid) <= baseline + THREAD_SLACK


def _fresh_request(port: int, loop: _EchoLoop) -> float:
    """Seconds for a new connection's 1 KiB echo while the proxy tears the others down."""
    started = time.monotonic()
    with socks5_tunnel(port, "127.0.0.1", loop.port) as sock:
        echoed = bytearray()

        def readable(_: socket.socket) -> None:
            chunk = sock.recv(len(PAYLOAD) - len(echoed))
            assert chunk, f"closed after {len(echoed)} bytes"
            echoed.extend(chunk)

        loop.selector.register(sock, selectors.EVENT_READ, readable)
        sock.sendall(PAYLOAD)
        loop.pump(lambda: len(echoed) == len(PAYLOAD), HANG_LIMIT)
        loop.selector.unregister(sock)
        assert bytes(echoed) == PAYLOAD
    return time.monotonic() - started
