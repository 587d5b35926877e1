"""TLS 1.3 cipher suites as 4.34 offers and picks them, differential against the real v2ray.

- The client end: the same config (dokodemo-door -> freedom over TLS, redirected to a raw
  listener) run by v2ray and by v2sync; each ClientHello is captured and its TLS 1.3 suites
  compared, in order. OpenSSL's own order would put AES-256 first.
- The server end: the same dokodemo-door-over-TLS config run by each; a client offering
  the suites in a given order gets the same suite from both. 4.34's server takes AES-128
  unless the client puts ChaCha20 first; v2sync's takes the client's first choice (the ssl
  module cannot order TLS 1.3 suites), which is the same for these orders: Go's own, and
  ChaCha20 first. (A client that puts AES-256 first gets AES-128 from 4.34 and AES-256 from
  v2sync: the README says so.)
"""
from __future__ import annotations

import socket
import struct
from typing import Any, Dict, List

import pytest
from OpenSSL import SSL
from support.certs import SERVER_NAME, Pki
from support.peers import TcpEchoServer, free_port
from support.procs import ConfigProcess, V2RayProcess, V2SyncProcess, require_v2ray
from test_tls_resumption_interop import v2ray_tls_echo
from v2sync.transport.internet.tls_client import _lib

TIMEOUT = 10.0
TLS13 = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
         0x1303: "TLS_CHACHA20_POLY1305_SHA256"}


def client_hello_suites(hello: bytes) -> List[int]:
    """The cipher suites of one ClientHello record, in order."""
    pos = 5 + 4 + 2 + 32  # record header, handshake header, legacy version, random
    pos += 1 + hello[pos]  # legacy session id
    (length,) = struct.unpack_from(">H", hello, pos)
    return [struct.unpack_from(">H", hello, pos + 2 + i)[0] for i in range(0, length, 2)]


def test_client_hello_suites_parse_whole_and_with_trailing_bytes() -> None:
    body = bytes(2 + 32) + bytes([3, 1, 2, 3]) + b"\x00\x04\x13\x01\x13\x03" + b"\x01\x00"
    record = b"\x16\x03\x01" + struct.pack(">H", 4 + len(body)) + b"\x01" + bytes(3) + body
    assert client_hello_suites(record) == [0x1301, 0x1303]
    assert client_hello_suites(record + b"trailing") == [0x1301, 0x1303]


def redirect_tls_config(entry: int, target: int) -> Dict[str, Any]:
    """dokodemo-door on ``entry`` -> freedom over TLS to 127.0.0.1:``target``."""
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": entry, "protocol": "dokodemo-door",
                      "settings": {"address": "127.0.0.1", "port": 9, "network": "tcp"}}],
        "outbounds": [{"protocol": "freedom",
                       "settings": {"redirect": f"127.0.0.1:{target}"},
                       "streamSettings": {"security": "tls", "tlsSettings": {
                           "serverName": SERVER_NAME, "allowInsecure": True}}}],
    }


def _read_record(conn: socket.socket) -> bytes:
    data = b""
    while len(data) < 5 or len(data) < 5 + struct.unpack_from(">H", data, 3)[0]:
        chunk = conn.recv(65536)
        assert chunk, "EOF before a whole ClientHello"
        data += chunk
    return data


def offered_suites(process: ConfigProcess, listener: socket.socket, entry: int) -> List[int]:
    """The TLS 1.3 suites ``process``'s TLS client offers, in order."""
    with process, socket.create_connection(("127.0.0.1", entry), timeout=TIMEOUT) as client:
        client.sendall(b"x")  # freedom dials on the first bytes
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            return [s for s in client_hello_suites(_read_record(conn)) if s in TLS13]


def test_v2sync_client_offers_the_tls13_suites_in_v2ray_order() -> None:
    binary = require_v2ray()
    offers = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        target = listener.getsockname()[1]
        for name in ("v2ray", "v2sync"):
            entry = free_port()
            config = redirect_tls_config(entry, target)
            process = V2RayProcess(config, binary=binary) if name == "v2ray" else V2SyncProcess(config)
            offers[name] = offered_suites(process, listener, entry)
    assert offers["v2ray"][0] == 0x1301  # the capture works: Go puts AES-128 first here
    assert offers["v2sync"] == offers["v2ray"], offers


def negotiated(port: int, suites: str) -> str:
    """The suite a server on ``port`` picks for a client offering ``suites`` in that order."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    assert _lib.SSL_CTX_set_ciphersuites(context._context, suites.encode()) == 1
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        # pyOpenSSL wants a blocking socket; the kernel's receive timeout bounds the wait.
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(TIMEOUT), 0))
        conn = SSL.Connection(context, sock)
        conn.set_tlsext_host_name(SERVER_NAME.encode())
        conn.set_connect_state()
        conn.do_handshake()
        name = conn.get_cipher_name()
    assert name is not None
    return name


ORDERS = [
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",  # Go's
    "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",  # no AES-128 on offer
]


def test_v2sync_server_picks_the_suite_v2ray_picks(pki: Pki) -> None:
    binary = require_v2ray()
    picked: Dict[str, List[str]] = {}
    with TcpEchoServer() as echo:
        for name in ("v2ray", "v2sync"):
            port = free_port()
            config = v2ray_tls_echo(pki, port, echo.port, False)
            process = V2RayProcess(config, binary=binary) if name == "v2ray" else V2SyncProcess(config)
            with process:
                picked[name] = [negotiated(port, order) for order in ORDERS]
    assert picked["v2ray"][0] == "TLS_AES_128_GCM_SHA256"
    assert picked["v2sync"] == picked["v2ray"], picked


@pytest.mark.parametrize("order, suite", [(ORDERS[0], "TLS_AES_128_GCM_SHA256"),
                                          (ORDERS[1], "TLS_CHACHA20_POLY1305_SHA256")])
def test_v2sync_client_and_server_agree_on_the_clients_first_suite(pki: Pki, order: str,
                                                                   suite: str) -> None:
    with TcpEchoServer() as echo:
        port = free_port()
        with V2SyncProcess(v2ray_tls_echo(pki, port, echo.port, False)):
            assert negotiated(port, order) == suite
