"""A VLESS UDP frame of 65,535 bytes (its 16-bit length allows it) through v2sync's VLESS
inbound to freedom: no datagram can carry more than 65,507 bytes, so freedom drops it and
the client's UDP connection goes on. Ending the link for it ended the whole connection
(found by a review); 4.34 cuts every datagram into 2 KiB ones and goes on. The VLESS bytes
are written here by hand from the protocol's layout, not with v2sync's codec."""
from __future__ import annotations

import socket
import struct
import uuid

from scenarios.keyed_helpers import USER_ID, server_config, server_inbound
from support.peers import UdpEchoServer, free_port
from support.procs import V2SyncProcess

IO_TIMEOUT = 5.0
MAX_READS = 64
COMMAND_UDP = 2
ATYP_IPV4 = 1


def vless_udp_request(target: tuple) -> bytes:
    host, port = target
    return (b"\x00" + uuid.UUID(USER_ID).bytes + b"\x00" + bytes([COMMAND_UDP])
            + struct.pack("!H", port) + bytes([ATYP_IPV4]) + socket.inet_aton(host))


def frame(payload: bytes) -> bytes:
    return struct.pack("!H", len(payload)) + payload


def read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    for _ in range(MAX_READS):
        if len(data) == size:
            return data
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    raise AssertionError(f"{size} bytes not read in {MAX_READS} reads")


def read_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack("!H", read_exact(sock, 2))
    return read_exact(sock, size)


def test_a_frame_no_datagram_can_carry_is_dropped_and_the_connection_goes_on(
        udp_echo: UdpEchoServer) -> None:
    port = free_port()
    config = server_config(server_inbound("vless", port, {}))
    config["log"]["loglevel"] = "info"
    with V2SyncProcess(config) as process, \
            socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.sendall(vless_udp_request(udp_echo.address) + frame(b"before"))
        assert read_exact(sock, 2) == b"\x00\x00"  # the response header: version, no addons
        assert read_frame(sock) == b"before"
        sock.sendall(frame(b"Z" * 65535))
        sock.sendall(frame(b"after"))
        assert read_frame(sock) == b"after"
        process.wait_for_log("a datagram of 65535 bytes")
