"""A SOCKS outbound over TLS whose server accepts and never answers the ClientHello.

4.34's SOCKS client sets the policy's handshake deadline on the connection before its first
write, and Go's ``tls.Client`` makes its handshake in that write, so the TLS handshake ends
at that deadline. v2sync's ended at the dial's 16 s (found by a review). The bound below is
far under those 16 s, not a timing."""
from __future__ import annotations

import socket
import time

from scenarios.helpers_scenarios import (connect, make_config, port_of, read_socks5_reply,
                                         running_instance, socks_inbound)

HANDSHAKE = 1  # seconds: policy.levels.0.handshake
BOUND = 8.0  # an end that comes from the handshake deadline, not from the dial's 16 s


def test_a_tls_handshake_under_a_socks_outbound_ends_at_the_handshake_deadline() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        outbound = {"protocol": "socks", "settings": {"servers": [
            {"address": "127.0.0.1", "port": silent.getsockname()[1]}]},
            "streamSettings": {"security": "tls",
                               "tlsSettings": {"serverName": "v2sync.test",
                                               "allowInsecure": True}}}
        config = make_config([socks_inbound()], [outbound], handshake=HANDSHAKE)
        with running_instance(config) as instance, \
                connect(port_of(instance, "socks-in"), timeout=20.0) as sock:
            started = time.monotonic()
            sock.sendall(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x09")
            assert sock.recv(2) == b"\x05\x00"
            read_socks5_reply(sock)
            try:
                ended = sock.recv(16)
            except ConnectionResetError:
                ended = b""
            elapsed = time.monotonic() - started
    assert ended == b""
    assert elapsed < BOUND, elapsed
