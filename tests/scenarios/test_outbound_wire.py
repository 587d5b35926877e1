"""The first bytes the HTTP and SOCKS outbounds send, captured from v2ray 4.34 and from
v2sync on the same config and compared (issue 17, parts 4 and 5). A raw listener plays the
proxy server: it records what arrives and answers as a server would."""
from __future__ import annotations

import contextlib
import socket
import time
from typing import Dict, Iterator, List

import pytest

from scenarios.vmess_helpers import make_process
from support.peers import OneConnectionServer, free_port

from v2sync.common.net import Destination
from v2sync.proxy.http import encoding as http_enc

TARGET_PORT = 9  # never dialed: the raw server only records the request
USER, PASSWORD = "wire-user", "wire-pass"
READ_TIMEOUT = 10.0


class Recorder(OneConnectionServer):
    """Accepts one connection, reads until ``until`` has been seen, answers ``reply``."""

    def __init__(self, until: bytes, replies: List[bytes]):
        super().__init__(self._converse, READ_TIMEOUT, "wire-recorder")
        self.until = until
        self.replies = replies
        self.received = b""

    def _converse(self, conn: socket.socket) -> None:
        replies = list(self.replies)
        while self.until not in self.received:
            data = conn.recv(4096)
            if not data:
                return
            self.received += data
            if replies and len(self.received) >= 3:
                conn.sendall(replies.pop(0))


def _client(implementation: str, protocol: str, server_port: int) -> Dict:
    socks_port = free_port()
    config = {"log": {"loglevel": "warning", "access": "none"},
              "inbounds": [{"tag": "in", "protocol": "socks", "listen": "127.0.0.1",
                            "port": socks_port, "settings": {}}],
              "outbounds": [{"protocol": protocol, "settings": {"servers": [
                  {"address": "127.0.0.1", "port": server_port,
                   "users": [{"user": USER, "pass": PASSWORD}]}]}}]}
    return {"process": make_process(implementation, config).start(), "port": socks_port}


@contextlib.contextmanager
def _tunnel(implementation: str, protocol: str, server_port: int) -> Iterator[socket.socket]:
    """A SOCKS5 CONNECT through the proxy under test, whose outbound goes to ``server_port``."""
    client = _client(implementation, protocol, server_port)
    try:
        with socket.create_connection(("127.0.0.1", client["port"]), timeout=READ_TIMEOUT) \
                as sock:
            sock.sendall(b"\x05\x01\x00")
            sock.recv(2)
            sock.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + TARGET_PORT.to_bytes(2, "big"))
            sock.recv(10)
            yield sock
    finally:
        client["process"].stop(check=implementation == "v2sync")


def _capture(implementation: str, protocol: str, until: bytes, replies: List[bytes]) -> bytes:
    with Recorder(until, replies) as recorder:
        with _tunnel(implementation, protocol, recorder.port) as sock:
            sock.sendall(b"first payload")
            recorder.thread.join(READ_TIMEOUT)
    return recorder.received


def test_http_connect_request_is_laid_out_as_4_34_lays_it_out() -> None:
    reference = _capture("v2ray", "http", b"\r\n\r\n", [])
    ours = _capture("v2sync", "http", b"\r\n\r\n", [])
    head, _, _ = ours.partition(b"\r\n\r\n")
    assert head + b"\r\n\r\n" == reference  # 4.34 sends its first payload after the 200
    expected = http_enc.encode_connect_request(Destination.tcp("127.0.0.1", TARGET_PORT),
                                               (USER, PASSWORD))
    assert reference == expected


def test_socks_greeting_and_credentials_are_sent_as_4_34_sends_them() -> None:
    credentials = bytes([1, len(USER)]) + USER.encode() + bytes([len(PASSWORD)]) + PASSWORD.encode()
    wanted = b"\x05\x01\x02" + credentials
    reference = _capture("v2ray", "socks", credentials, [b"\x05\x02", b"\x01\x00"])
    ours = _capture("v2sync", "socks", credentials, [b"\x05\x02", b"\x01\x00"])
    assert reference[:len(wanted)] == wanted, reference
    assert ours[:len(wanted)] == reference[:len(wanted)]


CREDENTIALS = bytes([1, len(USER)]) + USER.encode() + bytes([len(PASSWORD)]) + PASSWORD.encode()
REPLY_OK = b"\x00\x00\x01\x7f\x00\x00\x01\x00\x09"  # REP RSV ATYP 127.0.0.1:9, after VER
CLOSE_WITHIN = 2.0  # a refusal closes at once; the handshake timeout (4 s) would be later


class ScriptedSocksServer(Recorder):
    """Answers the greeting and credentials with ``05 02`` + ``auth_reply``, the request
    with ``reply``, then echoes; after a refusal it holds the connection until the client
    leaves."""

    def __init__(self, auth_reply: bytes, reply: bytes):
        super().__init__(b"", [])
        self.auth_reply = auth_reply
        self.reply = reply

    def _converse(self, conn: socket.socket) -> None:
        self._read(conn, 3 + len(CREDENTIALS))
        conn.sendall(b"\x05\x02" + self.auth_reply)
        self._read(conn, 10)  # 05 01 00 01 + IPv4 + port
        conn.sendall(self.reply)
        for _ in range(64):  # echo (or, after a refusal, wait for the client's close)
            data = conn.recv(4096)
            if not data:
                return
            conn.sendall(data)

    def _read(self, conn: socket.socket, size: int) -> None:
        wanted = len(self.received) + size
        while len(self.received) < wanted:
            data = conn.recv(wanted - len(self.received))
            if not data:
                raise OSError("closed")
            self.received += data


def _through(implementation: str, auth_reply: bytes, reply: bytes) -> tuple:
    """What a SOCKS client of the proxy gets back for ``ping`` (or how it ended), and
    whether the end came within CLOSE_WITHIN."""
    with ScriptedSocksServer(auth_reply, reply) as server, \
            _tunnel(implementation, "socks", server.port) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        try:
            answer = sock.recv(16) or "(ended)"
        except ConnectionResetError:  # FIN or reset depends on whether ``ping`` got there
            answer = "(ended)"        # before the close: 4.34 itself gives either when busy
        return answer, time.monotonic() - started < CLOSE_WITHIN


@pytest.mark.parametrize("auth_reply, reply", [
    (b"\x05\x00", b"\x05" + REPLY_OK),   # RFC 1929 status sent with version 5
    (b"\x01\x00", b"\x00" + REPLY_OK),   # a reply of version 0 ...
    (b"\x01\x00", b"\x04" + REPLY_OK),   # ... or 4
    (b"\x01\x00", b"\x05\x05\x00"),      # a refusal cut after 3 bytes, the server waiting
], ids=["auth-status-v5", "reply-v0", "reply-v4", "short-refusal"])
def test_odd_server_replies_are_read_as_4_34_reads_them(auth_reply: bytes, reply: bytes) -> None:
    """4.34's ClientHandshake reads only the status of the RFC 1929 answer and of the
    reply (not their version bytes), and knows a refusal by its first three bytes."""
    reference = _through("v2ray", auth_reply, reply)
    assert _through("v2sync", auth_reply, reply) == reference
