"""A TLS client that sends its request, then closes its TCP write side without a TLS
close_notify (what a client that just calls shutdown() does), still gets its answer: with
v2ray 4.34 and v2sync alike. v2sync's server took that FIN as a TLS error and every write
after it failed, so the answer was lost (found by a hostile-input review).

    client -TLS-> [socks inbound over TLS -> freedom] -> echo
"""
from __future__ import annotations

import socket
import ssl
from typing import Any, Dict

import pytest

from support.certs import SERVER_NAME, Pki
from support.peers import TcpEchoServer, free_port
from support.procs import V2RayProcess, V2SyncProcess

PAYLOAD = b"an answer after a plain FIN" * 100
IO_TIMEOUT = 5.0


def config(port: int, pki: Pki) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": port,
                          "settings": {"auth": "noauth"},
                          "streamSettings": {"security": "tls", "tlsSettings": pki.server_tls()}}],
            "outbounds": [{"protocol": "freedom"}]}


def exchange(port: int, pki: Pki, echo: TcpEchoServer) -> bytes:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    raw = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT)
    with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
        host, echo_port = echo.address
        tls.sendall(b"\x05\x01\x00")
        assert tls.recv(2) == b"\x05\x00"
        tls.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + echo_port.to_bytes(2, "big"))
        reply = b""
        while len(reply) < 10:
            reply += tls.recv(10 - len(reply))
        tls.sendall(PAYLOAD)
        # A FIN under the TLS layer, no close_notify (SSLSocket.shutdown would drop TLS).
        socket.socket.shutdown(tls, socket.SHUT_WR)
        got = b""
        try:
            while len(got) < len(PAYLOAD):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (ssl.SSLError, OSError):
            pass  # what the test then compares
        return got


@pytest.mark.parametrize("implementation", ["v2ray", "v2sync"])
def test_an_answer_after_a_plain_fin_arrives(implementation: str, v2ray_bin: str, pki: Pki,
                                             tcp_echo: TcpEchoServer) -> None:
    port = free_port()
    process = V2SyncProcess if implementation == "v2sync" else V2RayProcess
    with process(config(port, pki)):
        assert exchange(port, pki, tcp_echo) == PAYLOAD


def ending(port: int, pki: Pki, origin: Any) -> str:
    """How the connection ends for a strict client (no ragged EOF allowed) once the
    target has sent its bytes and closed: "close_notify", or the error it got."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    raw = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT)
    with context.wrap_socket(raw, server_hostname=SERVER_NAME,
                             suppress_ragged_eofs=False) as tls:
        host, origin_port = origin
        tls.sendall(b"\x05\x01\x00")
        assert tls.recv(2) == b"\x05\x00"
        tls.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + origin_port.to_bytes(2, "big"))
        got = b""
        try:
            for _ in range(1000):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (ssl.SSLError, OSError) as e:
            return type(e).__name__
        assert got.endswith(PAYLOAD)
        return "close_notify"


@pytest.mark.parametrize("implementation", ["v2ray", "v2sync"])
def test_the_end_of_a_relay_says_close_notify_as_4_34(implementation: str, v2ray_bin: str,
                                                      pki: Pki) -> None:
    """Go's ``Close`` sends close_notify when a relay ends; v2sync's went after the
    socket's shutdown and failed, so a strict client saw an unexpected EOF after all its
    data (found by a review)."""
    import threading

    def speak_and_close(listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.sendall(PAYLOAD)

    port = free_port()
    process_class = V2SyncProcess if implementation == "v2sync" else V2RayProcess
    with socket.create_server(("127.0.0.1", 0)) as target, \
            process_class(config(port, pki)):
        target.settimeout(IO_TIMEOUT)
        thread = threading.Thread(target=speak_and_close, args=(target,), daemon=True)
        thread.start()
        try:
            assert ending(port, pki, target.getsockname()) == "close_notify"
        finally:
            thread.join(IO_TIMEOUT)
