"""VLESS and Trojan against the real v2ray 4.34, both directions (issue 15 part 5).

Each chain: this test's SOCKS5 client -> client process (outbound) -> server process
(inbound) -> in-test XOR echo (TCP and UDP) and a DNS server. One side is v2sync, the other
v2ray; v2ray <-> v2ray runs once per protocol as the control that proves the harness.
Fails rather than skips when ``$CI`` is set and v2ray is missing.
"""
from __future__ import annotations

import os
from typing import Iterator, Tuple

import pytest
from scenarios.keyed_helpers import (DNS_ANSWER, DnsServer, client_config, client_outbound,
                                     dns_query_via_socks, server_config, server_inbound,
                                     stream, udp_via_socks)
from scenarios.vmess_helpers import exchange, make_process, open_tunnel
from support.certs import Pki
from support.peers import MIB, XOR_C, TcpEchoServer, UdpEchoServer, free_port, xor_bytes

BULK = 2 * MIB
UDP_TIMEOUT = 10.0
DATAGRAMS = 5

CASES = [("vless", "tcp"), ("vless", "tls"), ("vless", "wss"), ("trojan", "tls"),
         ("trojan", "wss")]
PAIRS = [("v2sync", "v2ray"), ("v2ray", "v2sync")]
PARAMS = [(p, t, c, s) for p, t in CASES for c, s in PAIRS] + [
    ("vless", "tls", "v2ray", "v2ray"), ("trojan", "tls", "v2ray", "v2ray")]


@pytest.fixture(scope="module")
def echoes() -> Iterator[Tuple[TcpEchoServer, UdpEchoServer, DnsServer]]:
    with TcpEchoServer(xor=XOR_C) as tcp, UdpEchoServer(xor=XOR_C) as udp, DnsServer() as dns:
        yield tcp, udp, dns


@pytest.mark.parametrize("protocol,transport,client,server", PARAMS,
                         ids=[f"{p}-{t}-{c}-to-{s}" for p, t, c, s in PARAMS])
def test_tcp_udp_and_dns_through_the_chain(pki: Pki, echoes, protocol: str, transport: str,
                                           client: str, server: str) -> None:
    tcp_echo, udp_echo, dns_server = echoes
    port, socks_port = free_port(), free_port()
    inbound = server_inbound(protocol, port, stream(pki, transport, server=True))
    outbound = client_outbound(protocol, port, stream(pki, transport, server=False))
    with make_process(server, server_config(inbound)), \
            make_process(client, client_config(socks_port, outbound)):
        payload = os.urandom(BULK)
        with open_tunnel(socks_port, tcp_echo.address) as sock:
            assert exchange(sock, payload) == xor_bytes(payload)
        with open_tunnel(socks_port, tcp_echo.address) as sock:  # a short second connection
            assert exchange(sock, b"ping") == xor_bytes(b"ping")
        # The v2ray <-> v2ray control drops a datagram now and then (once in a full run here,
        # trojan over TLS): it gets a second try; a chain with v2sync in it gets none.
        tries = 1 if "v2sync" in (client, server) else 2
        for i in range(DATAGRAMS):
            datagram = os.urandom(1 + i * 300)
            answers = (udp_via_socks(socks_port, udp_echo.address, datagram, UDP_TIMEOUT / tries)
                       for _ in range(tries))
            assert next(filter(None, answers), b"") == xor_bytes(datagram)
        assert dns_query_via_socks(socks_port, dns_server.address, UDP_TIMEOUT) == [DNS_ANSWER]


ANSWER_ROUNDS = 12


@pytest.mark.parametrize("protocol,transport", [("vless", "ws"), ("vless", "tcp"),
                                                ("trojan", "ws")])
def test_a_short_answer_then_close_reaches_a_v2ray_client(pki: Pki, protocol: str,
                                                          transport: str) -> None:
    """The outbound answers and stops reading at once (blackhole's 403). Closing the client
    connection right after the answer raced the v2ray client (over ws it takes our close
    frame as an error and drops what it had not passed on yet: 15 of 60 lost); as 4.34,
    the inbound now waits for the client (or uplinkOnly) before it closes."""
    port, socks_port = free_port(), free_port()
    inbound = server_inbound(protocol, port, stream(pki, transport, server=True))
    config = server_config(inbound)
    config["outbounds"] = [{"protocol": "blackhole", "settings": {"response": {"type": "http"}}}]
    outbound = client_outbound(protocol, port, stream(pki, transport, server=False))
    lost = 0
    with make_process("v2sync", config), make_process("v2ray", client_config(socks_port,
                                                                              outbound)):
        for i in range(ANSWER_ROUNDS):
            with open_tunnel(socks_port, ("127.0.0.1", 9)) as sock:
                # Half the rounds send bytes nobody will read. 4.34's Trojan client sends its
                # header only with a payload, so Trojan rounds always send.
                if i % 2 or protocol == "trojan":
                    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
                if not sock.recv(64).startswith(b"HTTP/1.1 403"):
                    lost += 1
    assert lost == 0
