"""An outbound with several servers, one of them down, as 4.34 serves it.

4.34's outbounds call ``PickServer`` inside their dial retry: a try that fails moves on to
the next server, so a dead server costs a try and the connection is served by the next.
The HTTP outbound's try is the dial *and* the CONNECT: a proxy that refuses (407) is a
failed try too, and the client's first payload is sent only after a 200, so the refusing
proxy never sees it. Each case runs the same client config in v2ray and in v2sync.
"""
from __future__ import annotations

import socket
from typing import Any, Dict, List

import pytest
from scenarios.helpers_scenarios import connect, recv_exact, socks5_address, socks5_greet
from scenarios.ss_helpers import LOG, PASSWORD, ss_server_config
from scenarios.vmess_helpers import make_process
from support.peers import TcpEchoServer, _TcpServer, free_port

CONNECTIONS = 4
IO_TIMEOUT = 10.0
PAYLOAD = b"through whichever server is up"


def _socks_client(socks_port: int, outbound: Dict[str, Any]) -> Dict[str, Any]:
    socks_in = {"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1",
                "port": socks_port, "settings": {"auth": "noauth"}}
    return {"log": LOG, "inbounds": [socks_in], "outbounds": [outbound]}


def _echoes(socks_port: int, echo_port: int) -> List[bytes]:
    answers = []
    for _ in range(CONNECTIONS):
        with connect(socks_port, timeout=IO_TIMEOUT) as sock:
            socks5_greet(sock)
            sock.sendall(b"\x05\x01\x00" + socks5_address("127.0.0.1")
                         + echo_port.to_bytes(2, "big"))
            recv_exact(sock, 10)  # the SOCKS reply (IPv4 BND)
            sock.sendall(PAYLOAD)
            try:
                answers.append(recv_exact(sock, len(PAYLOAD)))
            except (AssertionError, OSError):
                answers.append(b"")
    return answers


def test_a_dead_shadowsocks_server_is_skipped_as_in_4_34() -> None:
    dead, live = free_port(), free_port()
    method = "aes-256-gcm"
    servers = [{"address": "127.0.0.1", "port": port, "method": method, "password": PASSWORD}
               for port in (dead, live)]
    outbound = {"protocol": "shadowsocks", "settings": {"servers": servers}}
    answers = {}
    with TcpEchoServer() as echo, make_process("v2ray", ss_server_config(live, method)):
        for implementation in ("v2sync", "v2ray"):
            socks_port = free_port()
            with make_process(implementation, _socks_client(socks_port, outbound)):
                answers[implementation] = _echoes(socks_port, echo.port)
    assert answers == {"v2sync": [PAYLOAD] * CONNECTIONS, "v2ray": [PAYLOAD] * CONNECTIONS}


class Refusing(_TcpServer):
    """An HTTP proxy that answers every CONNECT with 407; keeps what it was sent."""

    def __init__(self) -> None:
        super().__init__("refusing-proxy", "127.0.0.1", 16, IO_TIMEOUT)
        self.received = b""

    def handle(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                     b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        conn.settimeout(0.3)  # what else arrives (a payload sent before the answer)
        try:
            for _ in range(64):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        self.received += data


@pytest.mark.parametrize("order", ["refusing first", "refusing second"])
def test_a_refusing_http_proxy_is_a_failed_try_as_in_4_34(order: str) -> None:
    answers = {}
    with TcpEchoServer() as echo, Refusing() as refusing:
        live = free_port()
        proxy = {"log": LOG, "inbounds": [{"protocol": "http", "listen": "127.0.0.1",
                                           "port": live, "settings": {}}],
                 "outbounds": [{"protocol": "freedom", "settings": {}}]}
        ports = [refusing.port, live] if order == "refusing first" else [live, refusing.port]
        outbound = {"protocol": "http", "settings": {
            "servers": [{"address": "127.0.0.1", "port": port} for port in ports]}}
        with make_process("v2ray", proxy):
            for implementation in ("v2sync", "v2ray"):
                socks_port = free_port()
                with make_process(implementation, _socks_client(socks_port, outbound)):
                    answers[implementation] = _echoes(socks_port, echo.port)
        assert PAYLOAD not in refusing.received  # never sent before a 200
        assert refusing.received.count(b"CONNECT ") >= CONNECTIONS  # each impl tried it
    assert answers == {"v2sync": [PAYLOAD] * CONNECTIONS, "v2ray": [PAYLOAD] * CONNECTIONS}
