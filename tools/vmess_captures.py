#!/usr/bin/env python3
"""Regenerate the VMess captures in tests/vectors/ from the real ``v2ray`` binary (4.34).

    python3 tools/vmess_captures.py client   # tests/vectors/vmess_v2ray_client_capture.json
    python3 tools/vmess_captures.py server   # tests/vectors/vmess_v2ray_server_capture.json
    python3 tools/vmess_captures.py all

``client``: v2ray is the VMess *client* (a SOCKS inbound, a VMess outbound per case) and a
raw listener here records every byte it sends for one SOCKS5 CONNECT example.com:80, the
payload, and the client's half-close (so the end-of-stream chunk is in the capture).

``server``: v2ray is the VMess *server* (clients: the id with alterId 4, so legacy and AEAD
headers are both accepted) with a freedom outbound to a local echo server. The requests are
made by v2sync's ``ClientSession`` with a seeded random source, so a test rebuilds them byte
for byte; what is recorded from v2ray is its response (the echo, then end of stream for TCP;
one datagram for UDP).

Everything runs on loopback; each case's ``captured_at`` / ``now`` is the clock time used, which
the tests then use as their clock. tests/proxy/vmess/test_vmess_interop_vectors.py reads both.
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the test harness (support.*) starts v2ray
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from support.peers import TcpEchoServer, UdpEchoServer, free_port  # noqa: E402
from support.procs import V2RayProcess  # noqa: E402

from v2sync.common.net import Address  # noqa: E402
from v2sync.proxy.vmess.encoding import ClientSession, Command, RequestHeader, client_options  # noqa: E402
from v2sync.proxy.vmess.ids import Security, VMessUser  # noqa: E402

VECTORS = REPO_ROOT / "tests" / "vectors"
CLIENT_FILE = VECTORS / "vmess_v2ray_client_capture.json"
SERVER_FILE = VECTORS / "vmess_v2ray_server_capture.json"
UUID = "7e4c1e4a-2b6f-4c3e-9d8a-5f1b2c3d4e5f"
CLIENT_TARGET = ("example.com", 80)
CLIENT_PAYLOAD = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
SERVER_PAYLOAD = b"ping from v2sync " * 8
CLIENT_CASES = [(0, "aes-128-gcm"), (0, "chacha20-poly1305"), (0, "none"),
                (4, "aes-128-gcm"), (4, "chacha20-poly1305"), (4, "none")]
# (alterId, security, command, seed)
SERVER_CASES = [(0, "AES128_GCM", "TCP", 1000), (0, "CHACHA20_POLY1305", "TCP", 1001),
                (0, "NONE", "TCP", 1002), (0, "LEGACY", "TCP", 1003), (4, "AES128_GCM", "TCP", 1004),
                (4, "NONE", "TCP", 1005), (4, "LEGACY", "TCP", 1006), (0, "AES128_GCM", "UDP", 1007),
                (4, "LEGACY", "UDP", 1008)]
SILENCE_SECONDS = 1.0  # nothing more for this long: the capture is complete
CAPTURE_LIMIT = 1 << 20
IO_TIMEOUT = 10.0


def _binary_version(v2ray: V2RayProcess) -> str:
    first = v2ray.log_text().splitlines()[:1]
    return first[0].strip() if first else "v2ray (version line missing)"


def _read_until_quiet(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until it closes or stays silent for SILENCE_SECONDS."""
    data = b""
    sock.settimeout(SILENCE_SECONDS)
    while len(data) < CAPTURE_LIMIT:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return data


class OneShotRecorder:
    """Accepts one connection and records what arrives (until quiet); answers nothing."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(IO_TIMEOUT)
        self.port = int(self.listener.getsockname()[1])
        self.data = b""
        self.thread = threading.Thread(target=self._run, name="capture")
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except socket.timeout:
            return
        with conn:
            self.data = _read_until_quiet(conn)

    def result(self) -> bytes:
        self.thread.join(IO_TIMEOUT + 2 * SILENCE_SECONDS)
        self.listener.close()
        return self.data


def _socks_connect(port: int, host: str, target_port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00", "socks greeting refused"
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host.encode() + struct.pack("!H", target_port))
    reply = sock.recv(64)
    assert reply[:2] == b"\x05\x00", f"socks CONNECT refused: {reply!r}"
    return sock


def capture_client_case(alter_id: int, security: str) -> Dict[str, Any]:
    recorder = OneShotRecorder()
    socks_port = free_port()
    config = {
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": socks_port, "protocol": "socks",
                      "settings": {"auth": "noauth"}}],
        "outbounds": [{"protocol": "vmess", "settings": {"vnext": [{
            "address": "127.0.0.1", "port": recorder.port,
            "users": [{"id": UUID, "alterId": alter_id, "security": security}]}]}}],
    }
    with V2RayProcess(config) as v2ray:
        captured_at = int(time.time())
        with _socks_connect(socks_port, *CLIENT_TARGET) as sock:
            sock.sendall(CLIENT_PAYLOAD)
            sock.shutdown(socket.SHUT_WR)
            wire = recorder.result()
        version = _binary_version(v2ray)
    assert wire, f"v2ray sent nothing for alterId {alter_id} {security}"
    return {"alter_id": alter_id, "security": security, "captured_at": captured_at,
            "request_hex": wire.hex(), "binary": version}


def _server_request(case: Tuple[int, str, str, int], port: int, now: int) -> Tuple[bytes, Dict[str, Any]]:
    alter_id, security, command, seed = case
    user = VMessUser.from_text(UUID, alter_id=alter_id)
    client = ClientSession(user, random_bytes=random.Random(seed).randbytes)
    header = RequestHeader(Command[command], Security[security], client_options(Security[security]),
                           Address.parse("127.0.0.1"), port)
    writer = client.request_body_writer(header)
    wire = client.encode_request_header(header, now) + writer.encode(SERVER_PAYLOAD)
    fields = {"alter_id": alter_id, "security": security, "command": command, "option": header.option,
              "seed": seed, "now": now, "target_port": port}
    return wire, fields


def capture_server_cases() -> Tuple[List[Dict[str, Any]], str]:
    vmess_port = free_port()
    config = {
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": vmess_port, "protocol": "vmess",
                      "settings": {"clients": [{"id": UUID, "alterId": 4}]}}],
        "outbounds": [{"protocol": "freedom"}],
    }
    cases = []
    with TcpEchoServer(close_after_first=True) as tcp_echo, UdpEchoServer() as udp_echo, \
            V2RayProcess(config) as v2ray:
        for case in SERVER_CASES:
            port = tcp_echo.port if case[2] == "TCP" else udp_echo.port
            wire, fields = _server_request(case, port, int(time.time()))
            with socket.create_connection(("127.0.0.1", vmess_port), timeout=IO_TIMEOUT) as sock:
                sock.sendall(wire)
                response = _read_until_quiet(sock)
            assert response, f"v2ray answered nothing to {fields}"
            cases.append({**fields, "request_hex": wire.hex(), "response_hex": response.hex()})
        version = _binary_version(v2ray)
    return cases, version


def _write(path: Path, document: Dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def _today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def write_client_capture() -> None:
    cases = [capture_client_case(alter_id, security) for alter_id, security in CLIENT_CASES]
    version = cases[0].pop("binary")
    for case in cases[1:]:
        case.pop("binary")
    _write(CLIENT_FILE, {
        "source": f"captured from the real {version} acting as a VMess client; socks5 CONNECT "
                  "example.com:80, payload sent, then client half-close",
        "command": "python3 tools/vmess_captures.py client",
        "captured_on": f"{_today()} (machine clock, UTC), loopback",
        "uuid": UUID, "target": f"{CLIENT_TARGET[0]}:{CLIENT_TARGET[1]}",
        "payload_hex": CLIENT_PAYLOAD.hex(), "cases": cases,
    })


def write_server_capture() -> None:
    cases, version = capture_server_cases()
    _write(SERVER_FILE, {
        "source": "request bytes produced by v2sync (ClientSession with random_bytes = "
                  f"random.Random(seed).randbytes), response bytes produced by the real {version} as "
                  "a VMess server (clients: id + alterId 4) with a freedom outbound to a local echo "
                  "server that echoes the payload and closes",
        "command": "python3 tools/vmess_captures.py server",
        "captured_on": f"{_today()} (machine clock, UTC), loopback",
        "uuid": UUID, "payload_hex": SERVER_PAYLOAD.hex(), "cases": cases,
    })


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=("client", "server", "all"))
    args = parser.parse_args(argv)
    if args.which in ("client", "all"):
        write_client_capture()
    if args.which in ("server", "all"):
        write_server_capture()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
