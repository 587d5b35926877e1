"""A client that upgrades to WebSocket and then streams frames without payload (empty binary
frames), never sending its protocol's header, against v2ray 4.34 and v2sync: both keep
answering other clients meanwhile. v2sync runs every inbound's handshakes in one selector
thread, and its WebSocket reader kept decoding such frames there for as long as they came:
SOCKS greetings on another inbound went unanswered (found by a review; 4.34 answered in
under 10 ms). Frames are written here by hand from RFC 6455."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest

from support.peers import free_port
from support.procs import ConfigProcess, V2RayProcess, V2SyncProcess

WS_PATH = "/ws"
MASK = b"\x01\x02\x03\x04"
EMPTY_FRAME = bytes([0x82, 0x80]) + MASK  # FIN, binary, masked, no payload
FLOOD_BLOCK = EMPTY_FRAME * 20_000  # 120 KB a send
FLOOD_SECONDS = 4.0  # the flood's own bound
GREETINGS = 3
GREETING_TIMEOUT = 2.0  # before the fix: no answer while the flood lasted
UPGRADE = (f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
           ).encode()
MAX_READS = 64


def config(ws_port: int, socks_port: int) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "inbounds": [
                {"tag": "ws-in", "protocol": "socks", "listen": "127.0.0.1", "port": ws_port,
                 "settings": {"auth": "noauth"},
                 "streamSettings": {"network": "ws", "wsSettings": {"path": WS_PATH}}},
                {"tag": "plain", "protocol": "socks", "listen": "127.0.0.1", "port": socks_port,
                 "settings": {"auth": "noauth"}}],
            "outbounds": [{"protocol": "freedom"}]}


@pytest.fixture(params=["v2ray", "v2sync"])
def server(request: pytest.FixtureRequest, v2ray_bin: str) -> Iterator[Dict[str, int]]:
    ports = {"ws": free_port(), "socks": free_port()}
    conf = config(ports["ws"], ports["socks"])
    process: ConfigProcess = (V2RayProcess(conf, binary=v2ray_bin) if request.param == "v2ray"
                              else V2SyncProcess(conf))
    with process:
        yield ports


def upgraded(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=GREETING_TIMEOUT)
    sock.sendall(UPGRADE)
    head = b""
    for _ in range(MAX_READS):
        if b"\r\n\r\n" in head:
            break
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def flood(sock: socket.socket, stop: threading.Event, sent: List[int]) -> None:
    deadline = time.monotonic() + FLOOD_SECONDS
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            sock.sendall(FLOOD_BLOCK)
            sent[0] += len(FLOOD_BLOCK)
    except OSError:
        pass  # the server ended it: the greetings below still have to be answered


def greeted(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=GREETING_TIMEOUT) as sock:
        sock.sendall(b"\x05\x01\x00")
        try:
            return sock.recv(2)
        except socket.timeout:
            return b"(no answer)"


def test_frames_without_payload_leave_other_handshakes_answered(server: Dict[str, int]) -> None:
    stop, sent = threading.Event(), [0]
    with upgraded(server["ws"]) as attacker:
        thread = threading.Thread(target=flood, args=(attacker, stop, sent), daemon=True)
        thread.start()
        try:
            time.sleep(0.3)
            answers = [greeted(server["socks"]) for _ in range(GREETINGS)]
            flooding = thread.is_alive() and sent[0] > 0  # the greetings came during the flood
        finally:
            stop.set()
            thread.join(FLOOD_SECONDS + 1)
    assert answers == [b"\x05\x00"] * GREETINGS
    assert flooding
