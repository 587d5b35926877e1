"""A UDP peer that was down for a moment answers again, as in 4.34.

The outbounds that send UDP from a connected socket (the `dns` outbound's pass-through,
Shadowsocks, the SOCKS outbound) got an ICMP "port unreachable" for a datagram sent while
their peer was down, as a ConnectionRefusedError on the next recv, and their reader ended.
4.34 reads with ReadFrom on an unconnected socket, which never sees ICMP errors. Each test
sends while the peer is down, brings it up, sends again on the same session, and wants the
answer from both implementations. The `dns` case lost the first answer that way; the
Shadowsocks session ended and the next datagram opened another, so that case held before
the change too and stays as the check that a server's restart loses nothing.
"""
from __future__ import annotations

import socket
import time
from typing import Any, Dict, List

import pytest
import socks
from scenarios.ss_helpers import ss_client_config, ss_server_config
from scenarios.vmess_helpers import make_process
from support.peers import XOR_C, UdpEchoServer, free_port, free_udp_port, xor_bytes

IMPLEMENTATIONS = ["v2sync", "v2ray"]
ICMP_SETTLE = 0.3  # the datagrams to the closed port have had their ICMP errors back
ANSWER_TIMEOUT = 5.0
DOWN_DATAGRAMS = (b"first", b"second-while-down")  # two: the error lands on a later recv
UP_DATAGRAMS = (b"third", b"fourth")


def _recv_or_none(sock: socket.socket) -> Any:
    try:
        return sock.recv(4096)
    except socket.timeout:
        return None


def _door_to_dns_outbound(port: int, target: int) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"protocol": "dokodemo-door", "listen": "127.0.0.1", "port": port,
                          "settings": {"address": "127.0.0.1", "port": target,
                                       "network": "udp"}}],
            "outbounds": [{"protocol": "dns"}]}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_the_dns_outbounds_pass_through_hears_a_peer_that_came_back(
        v2ray_bin: str, implementation: str) -> None:
    port, target = free_port(), free_udp_port()
    with make_process(implementation, _door_to_dns_outbound(port, target)), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(ANSWER_TIMEOUT)
        for datagram in DOWN_DATAGRAMS:  # not DNS: passed on, to nobody
            client.sendto(datagram, ("127.0.0.1", port))
        time.sleep(ICMP_SETTLE)
        with UdpEchoServer(xor=XOR_C, port=target):
            answers: List[Any] = []
            for datagram in UP_DATAGRAMS:
                client.sendto(datagram, ("127.0.0.1", port))
                answers.append(_recv_or_none(client))
    assert answers == [xor_bytes(d) for d in UP_DATAGRAMS], implementation


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_shadowsocks_client_hears_its_server_once_it_is_back(
        v2ray_bin: str, implementation: str) -> None:
    socks_port, ss_port = free_port(), free_port()
    config = ss_client_config(socks_port, ss_port, "aes-128-gcm")
    with UdpEchoServer(xor=XOR_C) as echo, make_process(implementation, config), \
            socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.set_proxy(socks.SOCKS5, "127.0.0.1", socks_port)
        client.settimeout(ANSWER_TIMEOUT)
        for datagram in DOWN_DATAGRAMS:
            client.sendto(datagram, echo.address)
        time.sleep(ICMP_SETTLE)
        with make_process("v2ray", ss_server_config(ss_port, "aes-128-gcm")):
            answers: List[Any] = []
            for datagram in UP_DATAGRAMS:
                client.sendto(datagram, echo.address)
                answers.append(_recv_or_none(client))
    assert answers == [xor_bytes(d) for d in UP_DATAGRAMS], implementation
