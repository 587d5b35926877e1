"""The HTTP inbound sends a request's body while it reads the answer, as 4.34 does
(http/server.go runs requestDone and responseDone at once), compared live with 4.34.

v2sync used to send the whole body before it read a byte of the answer: an early answer (a
413 to an upload, a 100 Continue to `Expect: 100-continue`) waited for the body's end, and a
client that left mid-body left the upstream connection open until connIdle (300 s).
"""
from __future__ import annotations

import socket
import time
from typing import Any, Dict, Optional

import pytest
from scenarios.vmess_helpers import make_process
from support.peers import OneConnectionServer, free_port

IMPLEMENTATIONS = ["v2sync", "v2ray"]
WAIT = 3.0  # an answer that comes at once comes well within this; a held one does not
HALF_BODY = b"12345"
HEAD = (b"POST http://origin.test/upload HTTP/1.1\r\nHost: origin.test\r\n"
        b"Proxy-Connection: keep-alive\r\nContent-Length: 10\r\n")
ANSWER_413 = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\nno"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
REACH_ORIGIN = 0.3
ORIGIN_TIMEOUT = 3 * WAIT


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _config(port: int, origin_port: int) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"protocol": "http", "listen": "127.0.0.1", "port": port}],
            "outbounds": [{"protocol": "freedom",
                           "settings": {"redirect": f"127.0.0.1:{origin_port}"}}]}


def _first_bytes(sock: socket.socket) -> Optional[bytes]:
    sock.settimeout(WAIT)
    try:
        return sock.recv(65536)
    except socket.timeout:
        return None


def _answer_413_at_once(conn: socket.socket) -> None:
    _read_head(conn)
    conn.sendall(ANSWER_413)
    while conn.recv(4096):  # the body's rest, until the proxy lets go
        pass


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_an_early_answer_reaches_the_client_before_the_body_ends_as_in_4_34(
        v2ray_bin: str, implementation: str) -> None:
    port = free_port()
    with OneConnectionServer(_answer_413_at_once, ORIGIN_TIMEOUT) as origin, \
            make_process(implementation, _config(port, origin.port)), \
            socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(HEAD + b"\r\n" + HALF_BODY)  # and the other half never comes
        answer = _first_bytes(client)
    assert answer is not None and answer.startswith(b"HTTP/1.1 413 "), (implementation, answer)


def _continue_then_read_body(conn: socket.socket) -> bytes:
    _read_head(conn)
    conn.sendall(CONTINUE)
    body = b""
    while len(body) < 10:
        chunk = conn.recv(4096)
        if not chunk:
            break
        body += chunk
    return body


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_100_continue_reaches_a_client_waiting_for_it_as_in_4_34(
        v2ray_bin: str, implementation: str) -> None:
    """`Expect: 100-continue`: the client sends its body only once the 100 is in. v2sync
    then passes the body on and the final answer back, on purpose (README)."""
    port = free_port()
    with OneConnectionServer(_continue_then_read_body, ORIGIN_TIMEOUT) as origin, \
            make_process(implementation, _config(port, origin.port)), \
            socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(HEAD + b"Expect: 100-continue\r\n\r\n")
        interim = _first_bytes(client)
        assert interim is not None and interim.startswith(b"HTTP/1.1 100 "), (implementation, interim)
        client.sendall(HALF_BODY * 2)
    if implementation == "v2sync":  # 4.34 takes the 100 for the answer: the body never goes
        assert origin.result == HALF_BODY * 2


def _wait_for_the_end(conn: socket.socket) -> str:
    _read_head(conn)
    conn.settimeout(WAIT)
    try:
        while conn.recv(4096):
            pass
    except socket.timeout:
        return "still open"
    except OSError:
        pass  # a reset ends it too
    return "ended"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_client_that_leaves_mid_body_ends_the_upstream_as_in_4_34(
        v2ray_bin: str, implementation: str) -> None:
    port = free_port()
    with OneConnectionServer(_wait_for_the_end, ORIGIN_TIMEOUT) as origin, \
            make_process(implementation, _config(port, origin.port)):
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(HEAD + b"\r\n" + HALF_BODY)
            time.sleep(REACH_ORIGIN)  # the head and half the body are upstream; then it leaves
        origin.thread.join(WAIT * 2)
    assert origin.result == "ended", implementation
