"""The first bytes the HTTP and SOCKS outbounds send, captured from v2ray 4.34 and from
v2sync on the same config and compared (issue 17, parts 4 and 5). A raw listener plays the
proxy server: it records what arrives and answers as a server would."""
from __future__ import annotations

import socket
import threading
from typing import Dict, List

from scenarios.vmess_helpers import make_process
from support.peers import free_port

from v2sync.common.net import Destination
from v2sync.proxy.http import encoding as http_enc

TARGET_PORT = 9  # never dialed: the raw server only records the request
USER, PASSWORD = "wire-user", "wire-pass"
READ_TIMEOUT = 10.0


class Recorder:
    """Accepts one connection, reads until ``until`` has been seen, answers ``reply``."""

    def __init__(self, until: bytes, replies: List[bytes]):
        self.until = until
        self.replies = replies
        self.received = b""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(READ_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, name="wire-recorder")

    def __enter__(self) -> "Recorder":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(READ_TIMEOUT * 2)
        self.listener.close()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except socket.timeout:
            return
        with conn:
            conn.settimeout(READ_TIMEOUT)
            replies = list(self.replies)
            try:
                while self.until not in self.received:
                    data = conn.recv(4096)
                    if not data:
                        return
                    self.received += data
                    if replies and len(self.received) >= 3:
                        conn.sendall(replies.pop(0))
            except (socket.timeout, OSError):
                return


def _client(implementation: str, protocol: str, server_port: int) -> Dict:
    socks_port = free_port()
    config = {"log": {"loglevel": "warning", "access": "none"},
              "inbounds": [{"tag": "in", "protocol": "socks", "listen": "127.0.0.1",
                            "port": socks_port, "settings": {}}],
              "outbounds": [{"protocol": protocol, "settings": {"servers": [
                  {"address": "127.0.0.1", "port": server_port,
                   "users": [{"user": USER, "pass": PASSWORD}]}]}}]}
    return {"process": make_process(implementation, config).start(), "port": socks_port}


def _capture(implementation: str, protocol: str, until: bytes, replies: List[bytes]) -> bytes:
    with Recorder(until, replies) as recorder:
        client = _client(implementation, protocol, recorder.port)
        try:
            with socket.create_connection(("127.0.0.1", client["port"]), timeout=READ_TIMEOUT) \
                    as sock:
                sock.sendall(b"\x05\x01\x00")
                sock.recv(2)
                sock.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + TARGET_PORT.to_bytes(2, "big"))
                sock.recv(10)
                sock.sendall(b"first payload")
                recorder.thread.join(READ_TIMEOUT)
        finally:
            client["process"].stop(check=implementation == "v2sync")
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
