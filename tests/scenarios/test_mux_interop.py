"""Mux.cool interop with the real v2ray 4.34, both directions (issue 17, parts 1, 2 and 6).

    SOCKS5 client (this test) -> [client: socks -> vmess out, mux on]
                              -> [server: vmess in -> freedom] -> in-test origins

v2sync client -> v2ray server, v2ray client -> v2sync server, v2sync <-> v2sync, and
v2ray <-> v2ray as the control that proves the harness. Each chain runs 8 parallel
connections and one 4 MiB exchange through an XOR echo, and UDP (SOCKS UDP ASSOCIATE inside
mux); the server's access log shows every sub-connection coming on one connection. Over
WebSocket + TLS the cross pairs run the parallel connections too.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Iterator

import pytest
import socks
from scenarios.mux_helpers import MuxChain, start_mux_chain
from scenarios.test_transport_interop import stream_settings
from scenarios.vmess_helpers import (IO_TIMEOUT, assert_same_bytes, exchange,
                                     exchange_in_parallel, open_tunnel)
from support.certs import Pki
from support.peers import MIB, XOR_C, TcpEchoServer, UdpEchoServer, xor_bytes

PAIRS = [("v2sync", "v2ray"), ("v2ray", "v2sync"), ("v2sync", "v2sync"), ("v2ray", "v2ray")]
CROSS = PAIRS[:2]
PARALLEL = 8
PARALLEL_BYTES = 192 * 1024
BULK_BYTES = 4 * MIB
DATAGRAMS = 10
LOG_WAIT = 5.0


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpEchoServer]:
    with TcpEchoServer(xor=XOR_C, timeout=60.0) as server:
        yield server


def _pair_id(pair) -> str:
    return f"{pair[0]}-to-{pair[1]}"


def _one_connection(chain: MuxChain, port: int, expected: int) -> None:
    """Every access line to ``port`` came from the same source: one mux connection."""
    deadline = time.monotonic() + LOG_WAIT
    sources = chain.sources_for(port)
    while len(sources) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        sources = chain.sources_for(port)
    assert len(sources) >= expected, chain.logs()
    assert len(set(sources)) == 1, f"sub-connections on several connections: {set(sources)}"


def _parallel(chain: MuxChain, echo: TcpEchoServer) -> None:
    payloads = [os.urandom(PARALLEL_BYTES) for _ in range(PARALLEL)]
    results = exchange_in_parallel(chain.socks_port, echo.address, payloads, "mux-parallel")
    for index, (received, payload) in enumerate(zip(results, payloads)):
        assert_same_bytes(received, xor_bytes(payload), f"connection {index}\n{chain.logs()}")


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_parallel_bulk_and_udp_over_one_mux_connection(pair, echo: TcpEchoServer) -> None:
    chain = start_mux_chain(*pair)
    try:
        _parallel(chain, echo)
        payload = os.urandom(BULK_BYTES)
        with open_tunnel(chain.socks_port, echo.address) as sock:
            assert_same_bytes(exchange(sock, payload), xor_bytes(payload), chain.logs())
        with UdpEchoServer(xor=XOR_C) as udp_echo:
            _udp_round_trips(chain, udp_echo)
            _one_connection(chain, udp_echo.port, 1)
        _one_connection(chain, echo.port, PARALLEL + 1)
    finally:
        chain.stop()


def _udp_round_trips(chain: MuxChain, udp_echo: UdpEchoServer) -> None:
    with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", chain.socks_port)
        sock.settimeout(IO_TIMEOUT / 2)
        for i in range(DATAGRAMS):
            payload = os.urandom(1 + i * 150)  # up to 1351 bytes: under 4.34's 2 KiB limit
            sock.sendto(payload, udp_echo.address)
            try:
                data, source = sock.recvfrom(4096)
            except socket.timeout:
                raise AssertionError(f"no reply to datagram {i}\n{chain.logs()}") from None
            assert data == xor_bytes(payload), f"datagram {i}"
            assert source == udp_echo.address


@pytest.mark.parametrize("pair", CROSS, ids=_pair_id)
def test_parallel_over_websocket_tls(pair, pki: Pki, echo: TcpEchoServer, tmp_path) -> None:
    chain = start_mux_chain(*pair, streams=stream_settings(pki, tmp_path, "wss"))
    try:
        _parallel(chain, echo)
        _one_connection(chain, echo.port, PARALLEL)
    finally:
        chain.stop()
