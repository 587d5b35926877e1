"""A ClientHello whose server name is not ASCII, against a v2sync TLS inbound.

CPython's SNI callback wrapper cannot decode such a name: the handshake fails before
v2sync's callback runs, and the wrapper printed a traceback to stderr, past the log level,
for every such ClientHello (found by a review; 4.34, on Go's TLS, accepts the name). It is
now one Info line, and the next client is served as before."""
from __future__ import annotations

import socket
import struct

import pytest
from OpenSSL import SSL

from scenarios.keyed_helpers import server_config, server_inbound, stream
from support.certs import SERVER_NAME, Pki
from support.peers import free_port
from support.procs import V2SyncProcess


def _handshake(port: int, name: bytes) -> None:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(None)  # pyOpenSSL wants a blocking socket; the kernel bounds reads
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
        conn = SSL.Connection(context, sock)
        conn.set_tlsext_host_name(name)
        conn.set_connect_state()
        conn.do_handshake()


def test_a_server_name_that_is_not_ascii_is_a_log_line(pki: Pki) -> None:
    port = free_port()
    config = server_config(server_inbound("vless", port, stream(pki, "tls", server=True)))
    config["log"] = {"loglevel": "info", "access": "none"}
    process = V2SyncProcess(config).start()
    try:
        for name in (b"\xff\xfe\xfd", b"b\xc3\xbccher.example"):
            with pytest.raises(SSL.Error):
                _handshake(port, name)
        _handshake(port, SERVER_NAME.encode())  # the next client is served as before
        process.wait_for_log("not ASCII")
    finally:
        process.stop()
    assert "Traceback" not in process.log_text()
