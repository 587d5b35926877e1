"""Mux.cool interop with the real v2ray 4.34, both directions (issue 17, parts 1, 2 and 6).

    SOCKS5 client (this test) -> [client: socks -> vmess out, mux on]
                              -> [server: vmess in -> freedom] -> in-test origins

v2sync client -> v2ray server, v2ray client -> v2sync server, v2sync <-> v2sync, and
v2ray <-> v2ray as the control that proves the harness. Each chain runs 8 parallel
connections and one 4 MiB exchange through an XOR echo, and UDP (SOCKS UDP ASSOCIATE inside
mux); the server's access log shows every sub-connection coming on one connection. Over
WebSocket + TLS the cross pairs run the parallel connections too. A v2sync server routes
each sub-connection by its own target and the mux connection's user.
"""
from __future__ import annotations

import os
import socket
from typing import Iterator

import pytest
from scenarios.mux_helpers import MuxChain, mux_client_config, start_mux_chain
from scenarios.test_transport_interop import stream_settings
from scenarios.vmess_helpers import (IO_TIMEOUT, assert_same_bytes, echo_datagrams, exchange,
                                     exchange_in_parallel, make_process, open_tunnel,
                                     vmess_client_entry, vmess_inbound)
from support.certs import Pki
from support.peers import MIB, XOR_C, TcpEchoServer, UdpEchoServer, free_port, xor_bytes

PAIRS = [("v2sync", "v2ray"), ("v2ray", "v2sync"), ("v2sync", "v2sync"), ("v2ray", "v2ray")]
CROSS = PAIRS[:2]
PARALLEL = 8
PARALLEL_BYTES = 192 * 1024
BULK_BYTES = 4 * MIB
DATAGRAMS = 10


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpEchoServer]:
    with TcpEchoServer(xor=XOR_C, timeout=60.0) as server:
        yield server


def _pair_id(pair) -> str:
    return f"{pair[0]}-to-{pair[1]}"


def _one_connection(chain: MuxChain, port: int, expected: int) -> None:
    """Every access line to ``port`` came from the same source: one mux connection."""
    sources = chain.wait_sources(port, expected)
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
    # up to 1351 bytes: under 4.34's 2 KiB limit
    echo_datagrams(chain, udp_echo, [os.urandom(1 + i * 150) for i in range(DATAGRAMS)])


@pytest.mark.parametrize("pair", CROSS, ids=_pair_id)
def test_parallel_over_websocket_tls(pair, pki: Pki, echo: TcpEchoServer, tmp_path) -> None:
    chain = start_mux_chain(*pair, streams=stream_settings(pki, tmp_path, "wss"))
    try:
        _parallel(chain, echo)
        _one_connection(chain, echo.port, PARALLEL)
    finally:
        chain.stop()


def test_each_sub_connection_is_routed_with_the_connections_user(echo: TcpEchoServer) -> None:
    """A v2ray client's mux connection into a v2sync server whose routing sends one user's
    connections to one port into a blackhole: the rule sees each sub-connection's target
    and the mux connection's user; the access log names both."""
    vmess_port, socks_port = free_port(), free_port()
    with TcpEchoServer(xor=XOR_C) as blocked:
        server_config = {
            "log": {"loglevel": "warning"},
            "inbounds": [vmess_inbound([vmess_client_entry(email="mux@test")], port=vmess_port)],
            "outbounds": [{"tag": "direct", "protocol": "freedom"},
                          {"tag": "block", "protocol": "blackhole"}],
            "routing": {"rules": [{"type": "field", "user": ["mux@test"],
                                   "port": str(blocked.port), "outboundTag": "block"}]}}
        server = make_process("v2sync", server_config).start()
        client = make_process("v2ray", mux_client_config(socks_port, vmess_port)).start()
        chain = MuxChain(client, server, socks_port)
        try:
            payload = os.urandom(4096)
            with open_tunnel(socks_port, echo.address) as sock:
                assert_same_bytes(exchange(sock, payload), xor_bytes(payload), chain.logs())
            with open_tunnel(socks_port, blocked.address) as sock:
                sock.sendall(payload)
                assert _read_until_closed(sock) == b""
            assert blocked.accepted == 0
            sources = chain.wait_sources(blocked.port, 1) + chain.wait_sources(echo.port, 1)
            assert len(set(sources)) == 1, "not one mux connection"
            text = server.log_text()
            assert f":{blocked.port} [block] email: mux@test" in text, text
            assert f":{echo.port} [direct] email: mux@test" in text, text
        finally:
            chain.stop()


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(IO_TIMEOUT)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


def test_each_sub_connection_is_sniffed(echo: TcpEchoServer) -> None:
    """The v2sync server's inbound sniffs HTTP: a sub-connection whose first bytes name a
    Host is routed by that name; one with other bytes goes by its IP, on the same mux
    connection."""
    vmess_port, socks_port = free_port(), free_port()
    inbound = vmess_inbound([vmess_client_entry()], port=vmess_port)
    inbound["sniffing"] = {"enabled": True, "destOverride": ["http"]}
    server_config = {
        "log": {"loglevel": "warning"}, "inbounds": [inbound],
        "outbounds": [{"tag": "direct", "protocol": "freedom"},
                      {"tag": "block", "protocol": "blackhole"}],
        "routing": {"rules": [{"type": "field", "domain": ["full:sniffed.test"],
                               "outboundTag": "block"}]}}
    server = make_process("v2sync", server_config).start()
    client = make_process("v2ray", mux_client_config(socks_port, vmess_port)).start()
    chain = MuxChain(client, server, socks_port)
    try:
        with open_tunnel(socks_port, echo.address) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: sniffed.test\r\n\r\n")
            assert _read_until_closed(sock) == b""
        payload = os.urandom(4096)
        with open_tunnel(socks_port, echo.address) as sock:
            assert_same_bytes(exchange(sock, payload), xor_bytes(payload), chain.logs())
        assert len(set(chain.wait_sources(echo.port, 2))) == 1, "not one mux connection"
        text = server.log_text()  # lines name the target asked for, sniffed or not (4.34)
        assert f"accepted tcp:127.0.0.1:{echo.port} [block]" in text, text
        assert f"accepted tcp:127.0.0.1:{echo.port} [direct]" in text, text
    finally:
        chain.stop()
