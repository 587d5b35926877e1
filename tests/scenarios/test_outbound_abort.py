"""A shutdown reaches an outbound that is still setting its connection up.

Two places an outbound waited where the link's interrupt did not reach it, so ``close()``
spent its whole abort budget and left the thread running ("thread(s) still running at
shutdown"):
- a server that accepted and then said nothing while the outbound waited for its answer
  (the HTTP outbound's TLS handshake or CONNECT, the SOCKS outbound's greeting, a
  Shadowsocks header whose write finishes a TLS handshake or WebSocket upgrade first);
- the waits between dial tries to a server that is down (4.34's schedule: 2 s in all for
  VMess and Trojan).

    app -> [socks -> outbound] -> a server that never answers, or nothing at all
"""
from __future__ import annotations

import socket
import time
from typing import Any, Callable, Dict

import pytest

from scenarios.helpers_scenarios import (IO_TIMEOUT, make_config, port_of, socks5_tunnel,
                                         socks_inbound)
from support.peers import _TcpServer, free_port
from v2sync.core import Instance
from v2sync.infra.conf.builder import config_from_dict

UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"
TLS = {"security": "tls", "tlsSettings": {"serverName": "v2sync.test"}}
SETTLE = 0.15  # seconds
POLL = 0.01


class Mute(_TcpServer):
    """Takes a connection, reads whatever comes and never answers."""

    def __init__(self) -> None:
        super().__init__("mute", "127.0.0.1", 4, IO_TIMEOUT)

    def handle(self, conn: socket.socket) -> None:
        while conn.recv(65536):
            pass


def _server(port: int) -> Dict[str, Any]:
    return {"address": "127.0.0.1", "port": port}


MUTE_OUTBOUNDS: Dict[str, Callable[[int], Dict[str, Any]]] = {
    "http": lambda port: {"protocol": "http", "settings": {"servers": [_server(port)]}},
    "http-tls": lambda port: {"protocol": "http", "streamSettings": TLS,
                              "settings": {"servers": [_server(port)]}},
    "socks": lambda port: {"protocol": "socks", "settings": {"servers": [_server(port)]}},
    "shadowsocks-tls": lambda port: {
        "protocol": "shadowsocks", "streamSettings": TLS, "settings": {"servers": [
            {**_server(port), "method": "aes-128-gcm", "password": "p"}]}},
    "shadowsocks-ws": lambda port: {
        "protocol": "shadowsocks", "streamSettings": {"network": "ws"}, "settings": {
            "servers": [{**_server(port), "method": "aes-128-gcm", "password": "p"}]}},
}
DOWN_OUTBOUNDS: Dict[str, Callable[[int], Dict[str, Any]]] = {
    "vmess": lambda port: {"protocol": "vmess", "settings": {"vnext": [
        {**_server(port), "users": [{"id": UUID}]}]}},
    "trojan": lambda port: {"protocol": "trojan", "settings": {"servers": [
        {**_server(port), "password": "p"}]}},
}


def _close_mid_setup(outbound: Dict[str, Any], reached: Callable[[], None]) -> None:
    """Open a connection through ``outbound``; once ``reached()`` returns, close the
    instance without a grace: every thread must be joined by the time close() returns."""
    config = make_config([socks_inbound()], [{"tag": "out", **outbound}])
    instance = Instance(config_from_dict(config))
    instance.start()
    try:
        with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", 9) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            reached()
            instance.close(grace=0)
            assert [t.name for t in instance.workers.live()] == []
    finally:
        if instance.running:
            instance.close()


@pytest.mark.parametrize("name", list(MUTE_OUTBOUNDS))
def test_a_shutdown_reaches_an_outbound_waiting_for_its_server(name: str) -> None:
    with Mute() as server:
        def accepted() -> None:
            deadline = time.monotonic() + IO_TIMEOUT
            while not server.accepted and time.monotonic() < deadline:
                time.sleep(POLL)
            assert server.accepted, "the outbound never dialed"
            time.sleep(SETTLE)  # its first flight out, it waits for the answer

        _close_mid_setup(MUTE_OUTBOUNDS[name](server.port), accepted)


@pytest.mark.parametrize("name", list(DOWN_OUTBOUNDS))
def test_a_shutdown_stops_an_outbounds_dial_tries(name: str) -> None:
    # The first try fails at once (refused); the second comes after 0.2 s, the last at 2 s.
    _close_mid_setup(DOWN_OUTBOUNDS[name](free_port()), lambda: time.sleep(SETTLE))
