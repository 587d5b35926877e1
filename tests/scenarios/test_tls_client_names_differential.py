"""Which name a TLS client checks when it dials an IP address and has no ``serverName``,
compared with 4.34's client against the same 4.34 server (found by a TLS review).

    socket -> [dokodemo-door -> freedom over TRANSPORT, no serverName] -> 127.0.0.1:S
           -> [4.34: dokodemo-door over TRANSPORT -> freedom] -> echo

Over WebSocket, 4.34's client (gorilla's Dialer) names the server by its URL's host, the
IP, and checks it against the certificate's IP addresses: it works when the certificate
holds 127.0.0.1 and fails when it does not. Over plain TCP, Go's TLS client refuses to
dial without a name (unless allowInsecure): both fail whatever the certificate holds.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Dict

import pytest

from scenarios.helpers_scenarios import IO_TIMEOUT
from support.certs import Pki, make_pki
from support.peers import TcpEchoServer, free_port
from support.procs import V2RayProcess, V2SyncProcess

PING = b"ping over tls"


def stream(transport: str, tls: Dict[str, Any]) -> Dict[str, Any]:
    settings: Dict[str, Any] = {"network": transport, "security": "tls", "tlsSettings": tls}
    if transport == "ws":
        settings["wsSettings"] = {"path": "/names"}
    return settings


def server_config(port: int, echo: TcpEchoServer, transport: str, pki: Pki) -> Dict[str, Any]:
    host, echo_port = echo.address
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"protocol": "dokodemo-door", "listen": "127.0.0.1", "port": port,
                          "settings": {"address": host, "port": echo_port, "network": "tcp"},
                          "streamSettings": stream(transport, pki.server_tls())}],
            "outbounds": [{"protocol": "freedom"}]}


def client_config(port: int, server_port: int, transport: str, pki: Pki) -> Dict[str, Any]:
    trust = {"disableSystemRoot": True,
             "certificates": [{"certificateFile": str(pki.ca_file), "usage": "verify"}]}
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"protocol": "dokodemo-door", "listen": "127.0.0.1", "port": port,
                          "settings": {"address": "127.0.0.1", "port": server_port,
                                       "network": "tcp"}}],
            "outbounds": [{"protocol": "freedom", "streamSettings": stream(transport, trust)}]}


def ping(port: int) -> bytes:
    """What comes back for PING: PING through a working chain, b"" when the dial failed."""
    with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as sock:
        sock.settimeout(IO_TIMEOUT)
        try:
            sock.sendall(PING)
            data = b""
            while len(data) < len(PING):
                chunk = sock.recv(len(PING) - len(data))
                if not chunk:
                    break
                data += chunk
            return data
        except (ConnectionResetError, BrokenPipeError):
            return b""


@pytest.mark.parametrize("transport", ["ws", "tcp"])
@pytest.mark.parametrize("ip_sans", [True, False], ids=["cert-has-ip", "cert-without-ip"])
def test_an_ip_without_server_name_is_checked_as_4_34_checks_it(
        v2ray_bin: str, tmp_path: Path, transport: str, ip_sans: bool) -> None:
    pki = make_pki(tmp_path / "pki", ip_sans=ip_sans)
    server_port, v2ray_port, v2sync_port = free_port(), free_port(), free_port()
    with TcpEchoServer() as echo, \
            V2RayProcess(server_config(server_port, echo, transport, pki), binary=v2ray_bin), \
            V2RayProcess(client_config(v2ray_port, server_port, transport, pki), binary=v2ray_bin), \
            V2SyncProcess(client_config(v2sync_port, server_port, transport, pki)):
        theirs = ping(v2ray_port)
        assert ping(v2sync_port) == theirs
    assert theirs == (PING if transport == "ws" and ip_sans else b"")
