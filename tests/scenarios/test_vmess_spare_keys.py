"""A v2sync VMess client derives its next connection's request keys while a request travels
(``aead.SpareKeys``), and the real v2ray 4.34 server accepts the headers sealed with them.

    SOCKS5 client (this test) -> [v2sync in-process: socks -> vmess out] -> tap
                              -> [v2ray 4.34: vmess in -> freedom] -> in-test echo

The tap forwards every byte unchanged both ways and records each connection's first 16
bytes, its AuthID, so the test sees which keys a connection used; v2ray, not the tap,
decides whether a header is good. Fails rather than skips under ``$CI`` without v2ray.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Iterator, List, Tuple

import pytest
from scenarios.helpers_scenarios import running_instance
from scenarios.vmess_helpers import (IO_TIMEOUT, client_config, exchange, make_process,
                                     open_tunnel, recv_exactly, server_config)
from support.peers import TcpEchoServer, _TcpServer, free_port

from v2sync.core import Instance
from v2sync.proxy.vmess.aead import AUTH_ID_SIZE
from v2sync.proxy.vmess.ids import VMessUser

PAYLOAD = b"spare keys through 4.34" * 40
FORWARD_LIMIT = 1 << 20  # bytes one direction of a tapped connection may carry
ATTEMPTS = 5  # tries at two connections inside one second of the clock
JOIN_TIMEOUT = 10.0


class AuthIdTap(_TcpServer):
    """Forwards each connection to ``upstream``, recording its first ``AUTH_ID_SIZE`` bytes."""

    def __init__(self, upstream: int):
        super().__init__("authid-tap", "127.0.0.1", max_connections=16, timeout=IO_TIMEOUT)
        self.upstream = upstream
        self.auth_ids: List[bytes] = []

    def handle(self, conn: socket.socket) -> None:
        head = recv_exactly(conn, AUTH_ID_SIZE, IO_TIMEOUT)
        self.auth_ids.append(head)
        with socket.create_connection(("127.0.0.1", self.upstream), timeout=IO_TIMEOUT) as up:
            up.sendall(head)
            back = threading.Thread(target=_forward, args=(up, conn), name="authid-tap-back")
            back.start()
            try:
                _forward(conn, up)
            finally:
                back.join(JOIN_TIMEOUT)


def _forward(source: socket.socket, sink: socket.socket) -> None:
    """Copy until EOF (then pass the EOF on), an error, or FORWARD_LIMIT bytes."""
    moved = 0
    try:
        while moved < FORWARD_LIMIT:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
            moved += len(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the other direction closed first: the connection is over


@pytest.fixture(scope="module")
def chain() -> Iterator[Tuple[int, VMessUser, AuthIdTap, TcpEchoServer]]:
    """(SOCKS port, the outbound's user, the tap, the echo) around a v2ray 4.34 server."""
    vmess_port, socks_port = free_port(), free_port()
    server = make_process("v2ray", server_config(vmess_port, alter_id=0)).start()
    try:
        with TcpEchoServer() as echo, AuthIdTap(vmess_port) as tap, \
                running_instance(client_config(socks_port, tap.port, "aes-128-gcm", 0)) as client:
            yield socks_port, _user_of(client), tap, echo
    finally:
        server.stop()


def _user_of(instance: Instance) -> VMessUser:
    handler = instance.outbounds.default()
    assert handler is not None
    return handler.proxy.picker.servers[0].users[0]


def _echo(socks_port: int, echo: TcpEchoServer) -> None:
    with open_tunnel(socks_port, echo.address) as sock:
        assert exchange(sock, PAYLOAD) == PAYLOAD


def _early_in_a_second() -> None:
    """Sleep to just past the next whole second of the clock (at most one second)."""
    now = time.time()
    time.sleep(int(now) + 1.01 - now)


def test_the_next_connection_uses_the_spare_keys_and_4_34_accepts_them(chain) -> None:
    socks_port, user, tap, echo = chain
    for _ in range(ATTEMPTS):
        _early_in_a_second()
        started = int(time.time())
        _echo(socks_port, echo)
        spare = user.spare_keys.peek()
        if spare is None or spare.second != started:
            continue  # a slow echo crossed into the next second: try again
        _echo(socks_port, echo)  # v2ray answered: it accepted the header
        if int(time.time()) == started:
            break  # both connections inside one second: the second one had a spare
    else:
        pytest.fail(f"no two connections inside one second in {ATTEMPTS} tries")
    assert tap.auth_ids[-1] == spare.auth_id
    assert user.spare_keys.peek() not in (None, spare)  # the next connection's, made already
    assert len(set(tap.auth_ids)) == len(tap.auth_ids)  # never an AuthID twice


def test_spare_keys_from_a_past_second_are_not_used(chain) -> None:
    socks_port, user, tap, echo = chain
    _echo(socks_port, echo)
    stale = user.spare_keys.peek()
    assert stale is not None, "no spare keys were made while the request travelled"
    _early_in_a_second()  # the next whole second: the spare is a second old at least
    _echo(socks_port, echo)  # accepted, with keys of its own second
    assert tap.auth_ids[-1] != stale.auth_id
    assert len(set(tap.auth_ids)) == len(tap.auth_ids)
