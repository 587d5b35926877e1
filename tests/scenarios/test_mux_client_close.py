"""A Mux.cool server that sends a sub-connection's answer and then closes the whole mux
connection at once: every byte reaches the application, then EOF, with v2ray 4.34 and
v2sync as the mux client alike (client.go closes, not interrupts, each session's output
when its connection ends). Before, v2sync dropped what was still queued in its pipes.

    app -> [client: socks in -> socks out, mux on] -> this test's mux server
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Any, Dict

import pytest

from scenarios.helpers_scenarios import recv_exact
from support.peers import _TcpServer, free_port
from support.procs import V2RayProcess, V2SyncProcess
from vmess_helpers import open_tunnel

ANSWER = 8 * 1024 * 1024  # more than the socket buffers hold while the app waits
CHUNK = 8192
STATUS_KEEP, OPTION_DATA = 2, 1
IO_TIMEOUT = 10.0
SETTLE = 1.0  # the server has closed before the application reads a byte
SLOW_READ, SLOW_PAUSE = 64 * 1024, 0.005


class AnswerThenClose(_TcpServer):
    """A SOCKS5 server (no auth) speaking Mux.cool after CONNECT: for the first frame it
    answers ANSWER bytes as Keep frames of that frame's session, then ends the connection
    (FIN). Frames are written by hand from the Mux.cool layout, not with v2sync's encoder."""

    def __init__(self) -> None:
        super().__init__("mux-answer", "127.0.0.1", max_connections=1, timeout=IO_TIMEOUT)

    def handle(self, conn: socket.socket) -> None:
        _, methods = recv_exact(conn, 2)
        recv_exact(conn, methods)
        conn.sendall(b"\x05\x00")
        _, _, _, atyp = recv_exact(conn, 4)
        length = recv_exact(conn, 1)[0] if atyp == 3 else {1: 4, 4: 16}[atyp]
        recv_exact(conn, length + 2)  # address, port: v1.mux.cool:9527
        conn.sendall(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00")
        meta_length, session_id = struct.unpack("!HH", recv_exact(conn, 4))
        assert meta_length >= 4
        keep = struct.pack("!HHBBH", 4, session_id, STATUS_KEEP, OPTION_DATA, CHUNK)
        conn.sendall((keep + b"D" * CHUNK) * (ANSWER // CHUNK))
        conn.shutdown(socket.SHUT_WR)  # the mux connection ends here; what the client
        while conn.recv(CHUNK):        # still sends is read, so the close sends no RST
            pass


def client_config(socks_port: int, server_port: int) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1",
                          "port": socks_port, "settings": {"auth": "noauth"}}],
            "outbounds": [{"tag": "out", "protocol": "socks", "mux": {"enabled": True},
                           "settings": {"servers": [{"address": "127.0.0.1",
                                                     "port": server_port}]}}]}


def read_slowly_to_eof(sock: socket.SocketType) -> bytes:
    """Everything up to EOF, a little at a time: the pipes behind stay full, so the close
    finds bytes still queued in them (reading at once, it found none in half the runs)."""
    data = bytearray()
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        chunk = sock.recv(SLOW_READ)
        if not chunk:
            return bytes(data)
        data += chunk
        time.sleep(SLOW_PAUSE)
    raise AssertionError(f"no EOF after {len(data)} bytes in {IO_TIMEOUT} s")


@pytest.mark.parametrize("implementation", [V2SyncProcess, V2RayProcess])
def test_an_answer_before_the_close_arrives_whole(implementation, v2ray_bin: str) -> None:
    socks_port = free_port()
    with AnswerThenClose() as server, \
            implementation(client_config(socks_port, server.port)):
        with open_tunnel(socks_port, ("127.0.0.1", 9), IO_TIMEOUT) as app:
            app.sendall(b"go")
            time.sleep(SETTLE)
            assert read_slowly_to_eof(app) == b"D" * ANSWER
