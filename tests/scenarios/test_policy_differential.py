"""Connection-lifetime policy against 4.34: a half-closed transfer that keeps moving bytes.

When one direction of a relay ends, 4.34 gives the other ``downlinkOnly`` (or
``uplinkOnly``) of inactivity, re-armed by every byte, and waits for it without a cap
(``proxy/socks/server.go``, ``proxy/freedom/freedom.go``: ``task.Run``). v2sync once cut
such a transfer ``max(connIdle, uplinkOnly, downlinkOnly) + 5 s`` after the first direction
ended, whatever was still moving: 305 s with the default policy. Both implementations run
the same small policy here, with a transfer that outlives that cap in each direction.
"""
from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Tuple

from scenarios.vmess_helpers import make_process
from helpers_scenarios import read_until_closed, socks5_tunnel
from support.peers import _TcpServer, free_port

TICK = 0.3
TICKS = 28  # 8.4 s: past the 7 s cap below (longest timeout 2 s + 5 s)
POLICY = {"levels": {"0": {"handshake": 4, "connIdle": 2, "uplinkOnly": 2, "downlinkOnly": 2}}}


class TrickleOrigin(_TcpServer):
    """``down``: one byte per tick, then close. ``up``: says "bye" and half-closes at once,
    then counts what the client sends until its EOF."""

    def __init__(self, mode: str):
        super().__init__(f"trickle-{mode}", "127.0.0.1", 4, timeout=TICK * TICKS + 15)
        self.mode = mode

    def __enter__(self) -> "TrickleOrigin":
        self.start()
        return self

    def handle(self, conn: socket.socket) -> None:
        if self.mode == "down":
            self.count_received(len(conn.recv(64)))  # the client's "hello"
            for _ in range(TICKS):
                conn.sendall(b".")
                time.sleep(TICK)
            return
        conn.sendall(b"bye")
        conn.shutdown(socket.SHUT_WR)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            self.count_received(len(data))


def _config(port: int) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning", "access": "none"}, "policy": POLICY,
            "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": port}],
            "outbounds": [{"protocol": "freedom"}]}


def _download(proxy_port: int, origin: TrickleOrigin) -> int:
    with socks5_tunnel(proxy_port, "127.0.0.1", origin.port) as sock:
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        return len(read_until_closed(sock, TICK * TICKS + 10))


def _upload(proxy_port: int, origin: TrickleOrigin) -> int:
    with socks5_tunnel(proxy_port, "127.0.0.1", origin.port) as sock:
        sock.settimeout(5)
        sent = 0
        for _ in range(TICKS):
            sock.sendall(b"u" * 100)
            sent += 100
            time.sleep(TICK)
        sock.shutdown(socket.SHUT_WR)
        read_until_closed(sock, 10)
        return sent


def _run(implementation: str, mode: str) -> Tuple[int, int]:
    """(bytes the client got or sent, bytes the origin received)."""
    port = free_port()
    with TrickleOrigin(mode) as origin, make_process(implementation, _config(port)):
        moved = (_download if mode == "down" else _upload)(port, origin)
        time.sleep(0.5)
        return moved, origin.bytes_received


def test_a_half_closed_transfer_runs_as_long_as_bytes_move_as_in_4_34() -> None:
    cases = [(impl, mode) for impl in ("v2ray", "v2sync") for mode in ("down", "up")]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(lambda case: _run(*case), cases)))
    expected = {"down": (TICKS, 5), "up": (TICKS * 100, TICKS * 100)}
    for (implementation, mode), result in results.items():
        assert result == expected[mode], (implementation, mode, results)
