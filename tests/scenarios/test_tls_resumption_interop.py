"""TLS session resumption against the real v2ray 4.34 server (``enableSessionResumption``).

4.34 sets ``SessionTicketsDisabled: !EnableSessionResumption`` on both ends and gives its
clients one LRU session cache (``transport/internet/tls/config.go``). v2sync's client keeps
the session each connection ends with and offers it on the next dial, only when the
setting is on. Here v2sync's client engine dials a v2ray dokodemo-door inbound over TLS
(to an echo server), exchanges bytes (a TLS 1.3 ticket comes with the server's first
bytes), closes, and dials again.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List

import pytest
from support.certs import Pki
from support.peers import TcpEchoServer, free_port
from support.procs import V2RayProcess, require_v2ray
from v2sync.common.net import Destination
from v2sync.transport.internet.config import build_tls
from v2sync.transport.internet.tcp import dial_tcp
from v2sync.transport.internet.tls import ClientTls

DIALS = 4
TIMEOUT = 10.0


def v2ray_tls_echo(pki: Pki, port: int, echo_port: int, resumption: bool) -> Dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [{
            "listen": "127.0.0.1", "port": port, "protocol": "dokodemo-door",
            "settings": {"address": "127.0.0.1", "port": echo_port, "network": "tcp"},
            "streamSettings": {"security": "tls", "tlsSettings": pki.server_tls(
                enableSessionResumption=resumption)},
        }],
        "outbounds": [{"protocol": "freedom"}],
    }


def _dials(client: ClientTls, port: int) -> List[bool]:
    """Whether each of DIALS connections resumed, each echoing a few bytes."""
    resumed = []
    for i in range(DIALS):
        raw = dial_tcp(Destination.tcp("127.0.0.1", port), TIMEOUT)
        tls = client.wrap(raw, Destination.tcp("127.0.0.1", port), time.monotonic() + TIMEOUT)
        try:
            tls.write(b"hello %d" % i)
            assert tls.read(100) == b"hello %d" % i
            resumed.append(tls._tls.resumed())
        finally:
            tls.close()
    return resumed


@pytest.mark.parametrize("resumption", [True, False])
def test_v2sync_client_resumes_v2ray_sessions_only_when_enabled(pki: Pki, resumption) -> None:
    binary = require_v2ray()
    port = free_port()
    with TcpEchoServer() as echo, V2RayProcess(
            v2ray_tls_echo(pki, port, echo.port, resumption), binary=binary):
        client = ClientTls(build_tls(pki.client_tls(enableSessionResumption=resumption)))
        resumed = _dials(client, port)
    # The first dial, and the next (its ClientHello was made during the first handshake,
    # before any ticket), are full handshakes; then each offers the last session.
    assert resumed == ([False, False, True, True] if resumption else [False] * DIALS)
