"""dokodemo-door in front of a VMess chain, across implementations (issue 16, "Interop").

    client (this test) -> [dokodemo-door -> vmess out] -> [vmess in -> freedom] -> echo

with v2sync in front of the real v2ray 4.34 and v2ray in front of v2sync, over TCP and UDP
(VMess command UDP). And the datagram size limit, run on both implementations: 4.34 carries
at most 2048 bytes per datagram and cuts longer ones; v2sync drops them whole. Neither ever
answers with more than it was sent.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Dict

import pytest

from scenarios.vmess_helpers import (IO_TIMEOUT, make_process, server_config, vmess_outbound)
from helpers_scenarios import recv_exact
from support.peers import XOR_C, TcpEchoServer, UdpEchoServer, free_port, pattern_bytes, xor_bytes

PAIRS = [("v2sync", "v2ray"), ("v2ray", "v2sync")]
DATAGRAMS = 20
LIMIT = 2048
NO_REPLY_WAIT = 1.0


def door(port: int, network: str, target_port: int) -> Dict[str, Any]:
    return {"tag": f"door-{network}", "protocol": "dokodemo-door", "listen": "127.0.0.1",
            "port": port, "settings": {"address": "127.0.0.1", "port": target_port,
                                       "network": network}}


@pytest.mark.parametrize("client, server", PAIRS, ids=[f"{c}-to-{s}" for c, s in PAIRS])
def test_dokodemo_in_front_of_a_vmess_chain(client: str, server: str) -> None:
    vmess_port, tcp_port, udp_port = free_port(), free_port(), free_port()
    with TcpEchoServer(xor=XOR_C) as tcp_echo, UdpEchoServer(xor=XOR_C) as udp_echo:
        client_config = {
            "log": {"loglevel": "warning", "access": "none"},
            "inbounds": [door(tcp_port, "tcp", tcp_echo.port), door(udp_port, "udp", udp_echo.port)],
            "outbounds": [vmess_outbound(vmess_port, "aes-128-gcm", 0)]}
        with make_process(server, server_config(vmess_port, 0)), \
                make_process(client, client_config):
            payload = pattern_bytes(300_000)
            with socket.create_connection(("127.0.0.1", tcp_port), IO_TIMEOUT) as sock:
                sock.sendall(payload)
                received = recv_exact(sock, len(payload))
            assert received == xor_bytes(payload)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(IO_TIMEOUT / 2)
                for i in range(DATAGRAMS):
                    datagram = os.urandom(1 + i * 70)
                    sock.sendto(datagram, ("127.0.0.1", udp_port))
                    data, source = sock.recvfrom(65536)
                    assert data == xor_bytes(datagram), f"datagram {i}"
                    assert source == ("127.0.0.1", udp_port)
            assert udp_echo.datagrams == DATAGRAMS


class WideUdpEcho(UdpEchoServer):
    """Echoes datagrams of any size (the shared echo reads 2 KiB), counting the largest."""

    largest = 0

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(65536)
            except socket.timeout:
                continue
            self.datagrams += 1
            self.largest = max(self.largest, len(data))
            self._sock.sendto(data, peer)


@pytest.mark.parametrize("implementation", ["v2sync", "v2ray"])
def test_datagram_size_limit(implementation: str) -> None:
    port = free_port()
    with WideUdpEcho() as echo:
        config = {"log": {"loglevel": "warning", "access": "none"},
                  "inbounds": [door(port, "udp", echo.port)],
                  "outbounds": [{"protocol": "freedom"}]}
        with make_process(implementation, config), \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(IO_TIMEOUT / 2)
            for size in (1, 1400, LIMIT):
                sock.sendto(b"x" * size, ("127.0.0.1", port))
                assert len(sock.recv(65536)) == size
            sock.sendto(b"y" * 3000, ("127.0.0.1", port))
            sock.settimeout(NO_REPLY_WAIT)
            try:
                answer = sock.recv(65536)
            except socket.timeout:
                answer = None
        assert echo.largest <= LIMIT  # nothing over 2 KiB ever left the proxy
    if implementation == "v2ray":
        assert answer == b"y" * LIMIT  # 4.34 cut it to its 2 KiB buffer
    else:
        assert answer is None  # dropped whole


@pytest.mark.parametrize("implementation", ["v2sync", "v2ray"])
def test_freedom_udp_is_a_full_cone(implementation: str) -> None:
    """4.34's freedom reads its UDP socket with ReadFrom: a datagram from any address to the
    port it sends from reaches the client, as if from the destination."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        target.bind(("127.0.0.1", 0))
        for sock in (target, stranger, client):
            sock.settimeout(IO_TIMEOUT / 2)
        config = {"log": {"loglevel": "warning", "access": "none"},
                  "inbounds": [door(port, "udp", target.getsockname()[1])],
                  "outbounds": [{"protocol": "freedom"}]}
        with make_process(implementation, config):
            client.sendto(b"hello", ("127.0.0.1", port))
            data, proxy_side = target.recvfrom(4096)
            assert data == b"hello"
            stranger.sendto(b"from a stranger", proxy_side)
            data, sender = client.recvfrom(4096)
    assert data == b"from a stranger"
    assert sender == ("127.0.0.1", port)


def _bound_ports(table: str) -> set:
    """Local ports of the sockets in ``/proc/net/tcp`` (listening only) or ``/proc/net/udp``."""
    with open(f"/proc/net/{table}") as rows:
        next(rows)
        fields = [row.split() for row in rows]
    return {int(f[1].rsplit(":", 1)[1], 16) for f in fields if table == "udp" or f[3] == "0A"}


def _networks_opened(implementation: str, ports: Dict[str, int]) -> Dict[str, Any]:
    config = {"log": {"loglevel": "warning", "access": "none"},
              "inbounds": [
                  {**door(ports["door"], "tcp, udp", 9), "tag": "door"},
                  {"tag": "ss", "protocol": "shadowsocks", "listen": "127.0.0.1", "port": ports["ss"],
                   "settings": {"method": "aes-128-gcm", "password": "p", "network": "tcp, udp"}}],
              "outbounds": [{"protocol": "freedom"}]}
    with make_process(implementation, config):
        tcp, udp = _bound_ports("tcp"), _bound_ports("udp")
    return {name: (port in tcp, port in udp) for name, port in ports.items()}


def test_a_network_list_with_a_space_opens_tcp_only_as_in_4_34() -> None:
    """v2fly's own examples write ``"network": "tcp, udp"``: Go splits on commas without
    trimming, so " udp" opens nothing and the inbound serves TCP alone. v2sync loads such a
    config (with a warning) and opens what 4.34 opens."""
    opened = {implementation: _networks_opened(implementation, {"door": free_port(), "ss": free_port()})
              for implementation in ("v2ray", "v2sync")}
    assert opened["v2sync"] == opened["v2ray"] == {"door": (True, False), "ss": (True, False)}
