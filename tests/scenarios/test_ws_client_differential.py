"""The WebSocket client's upgrade request, as 4.34 sends it and as v2sync does: the same
config, the same request line and headers in the same order (Go's ``Request.Write``: Host,
User-Agent, then the rest sorted by canonical name). Only the random key and each run's
server port differ.

    app -> [dokodemo-door -> freedom over ws] -> this test's capturing server
"""
from __future__ import annotations

import re
import socket
import time
from typing import Any, Dict, List

import pytest

from scenarios.helpers_scenarios import read_head
from support.peers import _TcpServer, free_port
from support.procs import V2RayProcess, V2SyncProcess

IO_TIMEOUT = 8.0
_KEY = re.compile(rb"(Sec-WebSocket-Key: )[A-Za-z0-9+/=]+")
_PORT = re.compile(rb"(Host: 127\.0\.0\.1:)[0-9]+")  # each run's own server port
CASES: Dict[str, Dict[str, Any]] = {
    "defaults": {"path": "/x"},
    "configured-headers": {"path": "/p?ed=2048", "headers": {
        "x-lower": "1", "Host": "h.example", "User-Agent": "ua", "zeta": "z", "Accept": "a"}},
    # Go parses "ws://host" + path as a URL: a fragment is dropped, even after a query
    "fragment": {"path": "/a#b"},
    "query-then-fragment": {"path": "/a?b#c"},
}


class CapturingServer(_TcpServer):
    """Records each request head it gets; answers nothing (the head is all we want)."""

    def __init__(self) -> None:
        super().__init__("ws-capture", "127.0.0.1", max_connections=1, timeout=IO_TIMEOUT)
        self.heads: List[bytes] = []

    def handle(self, conn: socket.socket) -> None:
        try:
            head = read_head(conn)[0]
        except AssertionError:
            # Unanswered, the dial fails and freedom dials again (both do); the test's end
            # can close that retry before its head is out: nothing to record.
            return
        self.heads.append(head)

    def first_head(self) -> bytes:
        deadline = time.monotonic() + IO_TIMEOUT
        while not self.heads and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.heads, "no upgrade request came"
        return self.heads[0]


def client_config(port: int, server_port: int, ws: Dict[str, Any]) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"protocol": "dokodemo-door", "listen": "127.0.0.1", "port": port,
                          "settings": {"address": "127.0.0.1", "port": 9, "network": "tcp"}}],
            "outbounds": [{"protocol": "freedom",
                           "settings": {"redirect": f"127.0.0.1:{server_port}"},
                           "streamSettings": {"network": "ws", "wsSettings": ws}}]}


def captured_head(process_class: Any, ws: Dict[str, Any]) -> bytes:
    port = free_port()
    with CapturingServer() as server:
        with process_class(client_config(port, server.port, ws)), \
                socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as app:
            app.sendall(b"hi")  # the first use sends the upgrade
            head = server.first_head()
    return _PORT.sub(rb"\1<port>", _KEY.sub(rb"\1<key>", head))


@pytest.mark.parametrize("case", list(CASES))
def test_upgrade_request_as_4_34_sends_it(case: str, v2ray_bin: str) -> None:
    ours = captured_head(V2SyncProcess, CASES[case])
    assert ours == captured_head(V2RayProcess, CASES[case])


def test_a_path_go_cannot_parse_fails_the_dial_as_in_4_34(v2ray_bin: str) -> None:
    """4.34 refuses to dial ``/%zz`` ("invalid URL escape"): no upgrade request is sent."""
    for process_class in (V2RayProcess, V2SyncProcess):
        port = free_port()
        with CapturingServer() as server:
            with process_class(client_config(port, server.port, {"path": "/%zz"})), \
                    socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as app:
                app.sendall(b"hi")
                app.settimeout(IO_TIMEOUT)
                try:
                    assert app.recv(10) == b""  # the client is closed, unanswered
                except ConnectionResetError:
                    pass
            assert server.heads == [], process_class.name
