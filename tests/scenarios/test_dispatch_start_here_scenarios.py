"""Every inbound that serves one client connection dispatches it with ``start_here``, so
its outbound dials and sends the client's first bytes from the inbound's thread; each
outbound that starts so (freedom, VMess, VLESS, Trojan, Shadowsocks, SOCKS) carries an
echo through one in-process Instance. UDP and the mux's sub-connections keep starting in
a pooled thread (``tests/app/dispatcher/test_dispatch_start_here.py``)."""
from __future__ import annotations

import socket
from typing import Any, Dict, List, Tuple

import pytest
from support.peers import TcpEchoServer, free_port

from v2sync.app.dispatcher.default import DefaultDispatcher

from helpers_scenarios import (connect, http_inbound, port_of, read_http_response, recv_exact,
                               running_instance, socks5_address, read_socks5_reply,
                               socks_inbound)

ID = "27848739-7e62-4138-9fd3-098a63964b6b"
PASSWORD = "start-here"
PAYLOAD = b"x" * 1024

SERVERS = {
    "vmess": ({"clients": [{"id": ID}]},
              lambda port: {"vnext": [{"address": "127.0.0.1", "port": port,
                                       "users": [{"id": ID, "security": "aes-128-gcm"}]}]}),
    "vless": ({"clients": [{"id": ID}], "decryption": "none"},
              lambda port: {"vnext": [{"address": "127.0.0.1", "port": port,
                                       "users": [{"id": ID, "encryption": "none"}]}]}),
    "trojan": ({"clients": [{"password": PASSWORD}]},
               lambda port: {"servers": [{"address": "127.0.0.1", "port": port,
                                          "password": PASSWORD}]}),
    "shadowsocks": ({"method": "aes-128-gcm", "password": PASSWORD},
                    lambda port: {"servers": [{"address": "127.0.0.1", "port": port,
                                               "method": "aes-128-gcm",
                                               "password": PASSWORD}]}),
    "socks": ({"auth": "noauth"},
              lambda port: {"servers": [{"address": "127.0.0.1", "port": port}]}),
}


def chain_config(echo_port: int) -> Dict[str, Any]:
    """For each protocol P: SOCKS inbound "entry-P" -> P outbound -> P inbound "P-in" ->
    freedom; plus an HTTP inbound and a dokodemo-door to the echo, both -> freedom."""
    inbounds: List[Dict[str, Any]] = [
        http_inbound("http-in"),
        {"tag": "door-in", "protocol": "dokodemo-door", "listen": "127.0.0.1", "port": 0,
         "settings": {"address": "127.0.0.1", "port": echo_port, "network": "tcp"}}]
    outbounds: List[Dict[str, Any]] = [{"tag": "direct", "protocol": "freedom"}]
    rules = []
    for protocol, (server_settings, client_settings) in SERVERS.items():
        port = free_port()
        inbounds.append({"tag": f"{protocol}-in", "protocol": protocol, "listen": "127.0.0.1",
                         "port": port, "settings": server_settings})
        inbounds.append(socks_inbound(f"entry-{protocol}"))
        outbounds.append({"tag": f"{protocol}-out", "protocol": protocol,
                          "settings": client_settings(port)})
        rules.append({"type": "field", "inboundTag": [f"entry-{protocol}"],
                      "outboundTag": f"{protocol}-out"})
    return {"inbounds": inbounds, "outbounds": outbounds, "routing": {"rules": rules}}


def socks_echo(port: int, echo: Tuple[str, int]) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00" + socks5_address(echo[0]) + echo[1].to_bytes(2, "big"))
        assert read_socks5_reply(sock)[1] == 0
        sock.sendall(PAYLOAD)
        return recv_exact(sock, len(PAYLOAD))


def connect_echo(port: int, echo: Tuple[str, int]) -> bytes:
    with connect(port) as sock:
        target = f"{echo[0]}:{echo[1]}".encode()
        sock.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
        response, rest = read_http_response(sock)
        assert response.status == 200 and not rest
        sock.sendall(PAYLOAD)
        return recv_exact(sock, len(PAYLOAD))


def door_echo(port: int) -> bytes:
    with connect(port) as sock:
        sock.sendall(PAYLOAD)
        got = recv_exact(sock, len(PAYLOAD))
        sock.shutdown(socket.SHUT_WR)
        return got


@pytest.fixture
def dispatches(monkeypatch):
    """(inbound tag, start_here) of every dispatch the Instance makes."""
    seen: List[Tuple[str, bool]] = []
    real = DefaultDispatcher.dispatch

    def spy(self, session, dest, early=b"", start_here=False):
        seen.append((session.inbound_tag, start_here))
        return real(self, session, dest, early, start_here)

    monkeypatch.setattr(DefaultDispatcher, "dispatch", spy)
    return seen


def test_each_inbound_starts_its_outbound_itself_and_each_outbound_carries_the_echo(
        dispatches):
    with TcpEchoServer() as echo, running_instance(chain_config(echo.address[1])) as instance:
        for protocol in SERVERS:
            assert socks_echo(port_of(instance, f"entry-{protocol}"), echo.address) == PAYLOAD
        assert connect_echo(port_of(instance, "http-in"), echo.address) == PAYLOAD
        assert door_echo(port_of(instance, "door-in")) == PAYLOAD
    tags = {tag for tag, _ in dispatches}
    assert tags == {"http-in", "door-in", *(f"entry-{p}" for p in SERVERS),
                    *(f"{p}-in" for p in SERVERS)}
    assert all(start_here for _, start_here in dispatches), dispatches
