"""Transport behaviour through real processes (issue 4): certificate checks in both
directions, a stalled TLS handshake, many concurrent TLS connections, WebSocket control
frames and X-Forwarded-For, and sockopt on a running outbound.
"""
from __future__ import annotations

import os
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Mapping, Tuple

import pytest
from scenarios.vmess_helpers import (USER_ID, Chain, ChainKey, ChainPool, RawVMessClient,
                                     assert_same_bytes, exchange, false_replays,
                                     open_tunnel, read_to_eof,
                                     running_pool, server_config, tcp_request)
from support.certs import Pki
from support.peers import XOR_C, TcpEchoServer, free_port, xor_bytes
from support.procs import V2SyncProcess

from v2sync.proxy.vmess.ids import VMessUser
from v2sync.transport.internet.websocket.frames import (OP_BINARY, OP_PING, FrameDecoder,
                                                        encode_close, encode_frame)
from v2sync.transport.internet.websocket.handshake import (build_request, new_key,
                                                           parse_response)

IO_TIMEOUT = 20.0
CONCURRENT = 50
ROUNDS = 3
CONCURRENT_BYTES = 64 * 1024
STALL_HANDSHAKE_SECONDS = 2
LOG_WAIT = 5.0
WS_PATH = "/ws"


def streams_for(pki: Pki):
    """Transport names used below -> (server, client) streamSettings."""
    def streams(name: str) -> Tuple[Mapping[str, Any], Mapping[str, Any]]:
        server = {"security": "tls", "tlsSettings": pki.server_tls()}
        if name == "tls":
            return server, {"security": "tls", "tlsSettings": pki.client_tls()}
        if name == "tls-wrong-name":
            return server, {"security": "tls", "tlsSettings": pki.client_tls("wrong.test")}
        if name == "tls-wrong-name-insecure":
            return server, {"security": "tls", "tlsSettings": pki.client_tls(
                "wrong.test", allowInsecure=True)}
        raise ValueError(name)
    return streams


@pytest.fixture(scope="module")
def pool(pki: Pki) -> Iterator[ChainPool]:
    with running_pool(2, streams_for(pki)) as chains:
        yield chains


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpEchoServer]:
    with TcpEchoServer(xor=XOR_C, timeout=60.0, max_connections=4096) as server:
        yield server


CROSS = [("v2sync", "v2ray"), ("v2ray", "v2sync")]


@pytest.mark.parametrize("client, server", CROSS, ids=[f"{c}-to-{s}" for c, s in CROSS])
def test_wrong_certificate_name_fails_unless_allow_insecure(pool, echo, client, server) -> None:
    """The three chains differ only in the client's serverName and allowInsecure, and the
    right name works: so the wrong-name chain's silence is the name check and nothing else."""
    right = pool.get(ChainKey(client, server, "aes-128-gcm", 0, "tls"))
    with open_tunnel(right.socks_port, echo.address) as sock:
        assert exchange(sock, b"right name") == xor_bytes(b"right name")
    wrong = pool.get(ChainKey(client, server, "aes-128-gcm", 0, "tls-wrong-name"))
    reached = echo.accepted
    with open_tunnel(wrong.socks_port, echo.address) as sock:
        sock.sendall(b"must not arrive")
        try:
            answer = read_to_eof(sock, IO_TIMEOUT)
        except ConnectionResetError:
            answer = b""
    assert answer == b"", wrong.logs()
    assert echo.accepted == reached, "the wrong-name chain reached the echo server"
    insecure = pool.get(ChainKey(client, server, "aes-128-gcm", 0, "tls-wrong-name-insecure"))
    with open_tunnel(insecure.socks_port, echo.address) as sock:
        assert exchange(sock, b"allowed") == xor_bytes(b"allowed")


def _exchange_or_failure(sock: socket.socket, payload: bytes) -> Any:
    try:
        return exchange(sock, payload)
    except AssertionError as failure:
        return failure


def _concurrent_round(chain: Chain, echo: TcpEchoServer) -> None:
    payloads = [os.urandom(CONCURRENT_BYTES) for _ in range(CONCURRENT)]
    refused_before = false_replays(chain)
    tunnels: List[socket.socket] = []
    try:
        for _ in range(CONCURRENT):
            tunnels.append(open_tunnel(chain.socks_port, echo.address))
        with ThreadPoolExecutor(CONCURRENT, thread_name_prefix="tls-round") as workers:
            results = list(workers.map(_exchange_or_failure, tunnels, payloads))
    finally:
        for tunnel in tunnels:
            tunnel.close()
    _redo_false_replays(chain, echo, results, payloads, refused_before)
    for received, payload in zip(results, payloads):
        assert_same_bytes(received, xor_bytes(payload))


def _redo_false_replays(chain: Chain, echo: TcpEchoServer, results: List[Any],
                        payloads: List[bytes], refused_before: int) -> None:
    """Run again, alone, each exchange a v2ray server refused as a replay (vmess_helpers
    FALSE_REPLAY: its cuckoo filters' false positive, before any answer). Any other
    failure, or one more failure than it logged refusals, fails the test."""
    failed = [i for i, result in enumerate(results) if isinstance(result, AssertionError)]
    if not failed:
        return
    deadline = time.monotonic() + LOG_WAIT  # 4.34 writes its log from a goroutine
    while false_replays(chain) - refused_before < len(failed) and time.monotonic() < deadline:
        time.sleep(0.05)
    refused = false_replays(chain) - refused_before
    early = all(" after 0 of " in str(results[i]) for i in failed)
    assert refused == len(failed) and early, (
        f"{[str(results[i]) for i in failed]}; refused as replays: {refused}\n{chain.logs()}")
    for i in failed:
        with open_tunnel(chain.socks_port, echo.address) as sock:
            results[i] = exchange(sock, payloads[i])


PAIRS_50 = [("v2sync", "v2sync"), ("v2ray", "v2sync"), ("v2sync", "v2ray")]


@pytest.mark.parametrize("client, server", PAIRS_50, ids=[f"{c}-to-{s}" for c, s in PAIRS_50])
def test_fifty_concurrent_tls_connections_for_several_rounds(pool, echo, client, server) -> None:
    chain = pool.get(ChainKey(client, server, "aes-128-gcm", 0, "tls"))
    for _ in range(ROUNDS):
        _concurrent_round(chain, echo)
    assert not chain.dead(), chain.logs()


def _tls_server_process(pki: Pki, extra: Dict[str, Any]) -> Tuple[V2SyncProcess, int]:
    port = free_port()
    config = server_config(port, 0, {"security": "tls", "tlsSettings": pki.server_tls(), **extra})
    config["policy"] = {"levels": {"0": {"handshake": STALL_HANDSHAKE_SECONDS}}}
    return V2SyncProcess(config), port


def test_stalled_tls_client_is_cut_at_the_handshake_deadline(pki: Pki) -> None:
    process, port = _tls_server_process(pki, {})
    with process:
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as stalled:
            stalled.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never finishes
            started = time.monotonic()
            assert read_to_eof(stalled, STALL_HANDSHAKE_SECONDS + 8) == b""
            elapsed = time.monotonic() - started
        assert STALL_HANDSHAKE_SECONDS - 0.5 < elapsed < STALL_HANDSHAKE_SECONDS + 5
        # Still serving: a real TLS client completes a handshake afterwards.
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname="v2sync.test") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")


# -- WebSocket control frames and X-Forwarded-For, against a v2sync ws inbound -----------------

def _ws_connect(port: int, headers: Mapping[str, str] = {}) -> Tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    key = new_key()
    sock.sendall(build_request(f"127.0.0.1:{port}", WS_PATH, key, headers))
    buf = b""
    while True:
        data = sock.recv(4096)
        assert data, "closed during the websocket handshake"
        buf += data
        result = parse_response(buf, key)
        if result is not None:
            return sock, buf[result[1]:]


def _ws_events(sock: socket.socket, decoder: FrameDecoder, first: bytes, want: str) -> List[tuple]:
    events = decoder.feed(first) if first else []
    deadline = time.monotonic() + IO_TIMEOUT
    while not any(e[0] == want for e in events) and time.monotonic() < deadline:
        data = sock.recv(4096)
        if not data:
            break
        events += decoder.feed(data)
    return events


@pytest.fixture
def ws_server(tmp_path) -> Iterator[Tuple[V2SyncProcess, int]]:
    port = free_port()
    config = server_config(port, 0, {"network": "ws", "wsSettings": {"path": WS_PATH}})
    config["log"] = {"loglevel": "info", "access": ""}
    with V2SyncProcess(config) as process:
        yield process, port


def test_ws_ping_gets_pong_and_close_is_echoed(ws_server) -> None:
    _process, port = ws_server
    sock, rest = _ws_connect(port)
    with sock:
        decoder = FrameDecoder(expect_masked=False)
        sock.sendall(encode_frame(OP_PING, b"are you there", os.urandom(4)))
        events = _ws_events(sock, decoder, rest, "pong")
        assert ("pong", b"are you there") in events
        sock.sendall(encode_close(1000, b"", os.urandom(4)))
        events = _ws_events(sock, decoder, b"", "close")
        assert any(e[0] == "close" and e[1] == 1000 for e in events)


def test_ws_x_forwarded_for_becomes_the_source(ws_server, echo) -> None:
    """hub.go: the first X-Forwarded-For entry is the connection's source (access log)."""
    process, port = ws_server
    client = RawVMessClient(VMessUser.from_text(USER_ID), tcp_request(echo.address))
    sock, _rest = _ws_connect(port, {"X-Forwarded-For": "203.0.113.7, 10.0.0.1"})
    with sock:
        sock.sendall(encode_frame(OP_BINARY, client.first_flight(b"hi"), os.urandom(4)))
        process.wait_for_log(r"203\.0\.113\.7:0 accepted tcp:127\.0\.0\.1:", timeout=IO_TIMEOUT)
