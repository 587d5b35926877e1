#!/usr/bin/env python3
"""Regenerate tests/vectors/shadowsocks_v2ray_capture.json from the real ``v2ray`` binary (4.34).

    python3 tools/shadowsocks_captures.py

For each method (aes-128-gcm, aes-256-gcm, chacha20-poly1305, none):

- ``client_requests``: v2ray is the Shadowsocks *client* (SOCKS inbound, Shadowsocks outbound);
  a raw listener here records what it sends for SOCKS5 CONNECT example.com:443 and a payload.
- ``client_datagrams``: the same over UDP: one datagram to 10.1.2.3:5353 through SOCKS5 UDP
  ASSOCIATE, recorded by a UDP socket standing where the server would be.
- ``server_responses``: v2ray is the Shadowsocks *server* with a freedom outbound to an origin
  here that answers and closes; the request is made with v2sync's encoder (the salts are
  random, so only v2ray's answer is the vector) and v2ray's encrypted answer is recorded.

The ``published`` known answers (RFC 5869, OpenSSL) are not captures; they are kept as they are.
tests/proxy/shadowsocks/test_ss_encoding.py reads the file.
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
from typing import Any, Dict, List

import vmess_captures as common  # the shared recorder, SOCKS client and v2ray runner

from support.peers import free_port, free_udp_port  # noqa: E402  (path set by vmess_captures)
from support.procs import V2RayProcess  # noqa: E402

from v2sync.common.net import Address  # noqa: E402
from v2sync.proxy.shadowsocks.encoding import METHODS, Account, encode_request  # noqa: E402

VECTOR = common.VECTORS / "shadowsocks_v2ray_capture.json"
PASSWORD = "v2sync-vector"
METHOD_NAMES = ["aes-128-gcm", "aes-256-gcm", "chacha20-poly1305", "none"]
TCP_TARGET = ("example.com", 443)
TCP_PAYLOAD = b"hello through v2ray"
UDP_TARGET = ("10.1.2.3", 5353)
UDP_PAYLOAD = b"datagram via v2ray"
ORIGIN_ANSWER = b"answer from the origin"


def _client_config(method: str, socks_port: int, server_port: int) -> Dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": socks_port, "protocol": "socks",
                      "settings": {"auth": "noauth", "udp": True}}],
        "outbounds": [{"protocol": "shadowsocks", "settings": {"servers": [{
            "address": "127.0.0.1", "port": server_port, "method": method, "password": PASSWORD}]}}],
    }


def capture_client_request(method: str) -> Dict[str, Any]:
    recorder = common.OneShotRecorder()
    socks_port = free_port()
    with V2RayProcess(_client_config(method, socks_port, recorder.port)):
        with common._socks_connect(socks_port, *TCP_TARGET) as sock:
            sock.sendall(TCP_PAYLOAD)
            wire = recorder.result()
    assert wire, f"v2ray sent nothing for {method}"
    return {"method": method, "target": f"{TCP_TARGET[0]}:{TCP_TARGET[1]}",
            "payload": TCP_PAYLOAD.decode(), "wire_hex": wire.hex()}


def capture_client_datagram(method: str) -> Dict[str, Any]:
    socks_port, server_port = free_port(), free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            V2RayProcess(_client_config(method, socks_port, server_port)):
        server.bind(("127.0.0.1", server_port))
        server.settimeout(common.IO_TIMEOUT)
        with socket.create_connection(("127.0.0.1", socks_port), timeout=common.IO_TIMEOUT) as control:
            control.sendall(b"\x05\x01\x00")
            assert control.recv(2) == b"\x05\x00"
            control.sendall(b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
            reply = control.recv(64)
            relay = ("127.0.0.1", struct.unpack("!H", reply[-2:])[0])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                header = b"\x00\x00\x00\x01" + socket.inet_aton(UDP_TARGET[0]) + struct.pack("!H", UDP_TARGET[1])
                client.sendto(header + UDP_PAYLOAD, relay)
                wire, _ = server.recvfrom(65535)
    return {"method": method, "target": f"{UDP_TARGET[0]}:{UDP_TARGET[1]}",
            "payload": UDP_PAYLOAD.decode(), "wire_hex": wire.hex()}


def _origin() -> socket.socket:
    """Answers ORIGIN_ANSWER to one connection and closes (in a thread)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(common.IO_TIMEOUT)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            return
        with conn:
            conn.settimeout(common.IO_TIMEOUT)
            conn.recv(4096)
            conn.sendall(ORIGIN_ANSWER)

    threading.Thread(target=serve, name="origin").start()
    return listener


def capture_server_response(method: str) -> Dict[str, Any]:
    server_port = free_port()
    config = {
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": server_port, "protocol": "shadowsocks",
                      "settings": {"method": method, "password": PASSWORD, "network": "tcp"}}],
        "outbounds": [{"protocol": "freedom"}],
    }
    account = Account.from_password(METHODS[method], PASSWORD)
    with _origin() as origin, V2RayProcess(config):
        writer, head = encode_request(account, Address.parse("127.0.0.1"), origin.getsockname()[1])
        with socket.create_connection(("127.0.0.1", server_port), timeout=common.IO_TIMEOUT) as sock:
            sock.sendall(head + writer.encode(b"question"))
            wire = common._read_until_quiet(sock)
    assert wire, f"v2ray answered nothing for {method}"
    return {"method": method, "payload": ORIGIN_ANSWER.decode(), "wire_hex": wire.hex()}


def main(argv: List[str]) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    published = json.loads(VECTOR.read_text())["published"] if VECTOR.exists() else {}
    document = {
        "source": "captured from the real v2ray 4.34 binary (Debian v2ray 4.34.0) over loopback; "
                  "password below, salts are whatever v2ray drew",
        "command": "python3 tools/shadowsocks_captures.py",
        "captured_on": f"{common._today()} (machine clock, UTC), loopback",
        "password": PASSWORD,
        "client_requests": [capture_client_request(m) for m in METHOD_NAMES],
        "client_datagrams": [capture_client_datagram(m) for m in METHOD_NAMES],
        "server_responses": [capture_server_response(m) for m in METHOD_NAMES],
        "published": published,
    }
    common._write(VECTOR, document)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
