"""VMess over every stream transport, against the real v2ray 4.34 in both directions (issue 4).

    SOCKS5 client (this test) -> [client process: socks -> vmess out over <transport>]
                              -> [server process: vmess in over <transport> -> freedom]
                              -> in-test XOR echo

Transports: TLS (verified against a test CA), WebSocket, WebSocket+TLS, TCP with the HTTP
header disguise, and domain sockets. Each pair moves 8 MiB of random bytes each way and
runs 10 parallel connections; v2ray <-> v2ray runs too, as the control that proves the
harness. The tests fail rather than skip when ``$CI`` is set and v2ray is missing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Tuple

import pytest
from scenarios.vmess_helpers import (ChainKey, ChainPool, assert_same_bytes, exchange,
                                     exchange_in_parallel, open_tunnel, running_pool)
from support.certs import Pki
from support.peers import MIB, XOR_C, TcpEchoServer, xor_bytes

BULK_BYTES = 8 * MIB
PARALLEL_CONNECTIONS = 10
PARALLEL_BYTES = 256 * 1024
POOL_CAPACITY = 3
WS_PATH = "/v2sync-ws"
HEADER_PATHS = ["/video", "/stream"]

TRANSPORTS = ["tls", "ws", "wss", "http-header", "domainsocket"]
PAIRS = [("v2sync", "v2ray"), ("v2ray", "v2sync"), ("v2sync", "v2sync"), ("v2ray", "v2ray")]
KEYS = [ChainKey(c, s, "aes-128-gcm", 0, t) for t in TRANSPORTS for c, s in PAIRS]


def stream_settings(pki: Pki, socket_dir: Path, transport: str
                    ) -> Tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(server, client) streamSettings for ``transport``, the same JSON for both programs."""
    tls_server = {"security": "tls", "tlsSettings": pki.server_tls()}
    tls_client = {"security": "tls", "tlsSettings": pki.client_tls()}
    ws: Dict[str, Any] = {"network": "ws", "wsSettings": {"path": WS_PATH,
                                                          "headers": {"Host": "v2sync.test"}}}
    if transport == "tls":
        return tls_server, tls_client
    if transport == "ws":
        return ws, ws
    if transport == "wss":
        return {**ws, **tls_server}, {**ws, **tls_client}
    if transport == "http-header":
        header = {"tcpSettings": {"header": {"type": "http", "request": {"path": HEADER_PATHS}}}}
        return header, header
    if transport == "domainsocket":
        # One path per chain start: a previous chain's server may still be shutting down.
        path = str(socket_dir / f"vmess-{os.urandom(4).hex()}.sock")
        ds = {"network": "domainsocket", "dsSettings": {"path": path}}
        return ds, ds
    raise ValueError(transport)


@pytest.fixture(scope="module")
def pool(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainPool]:
    socket_dir = tmp_path_factory.mktemp("ds")
    with running_pool(POOL_CAPACITY, lambda t: stream_settings(pki, socket_dir, t)) as chains:
        yield chains


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpEchoServer]:
    with TcpEchoServer(xor=XOR_C, timeout=60.0) as server:
        yield server


@pytest.fixture(scope="module")
def bulk_payload() -> bytes:
    return os.urandom(BULK_BYTES)


@pytest.mark.parametrize("key", KEYS, ids=[k.id for k in KEYS])
def test_eight_mib_both_ways_and_ten_parallel(pool: ChainPool, echo: TcpEchoServer,
                                              bulk_payload: bytes, key: ChainKey) -> None:
    chain = pool.live(key)
    with open_tunnel(chain.socks_port, echo.address) as sock:
        try:
            received = exchange(sock, bulk_payload)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{chain.logs()}") from None
    assert_same_bytes(received, xor_bytes(bulk_payload), chain.logs())

    payloads = [bulk_payload[i * PARALLEL_BYTES:(i + 1) * PARALLEL_BYTES]
                for i in range(PARALLEL_CONNECTIONS)]
    results = exchange_in_parallel(chain.socks_port, echo.address, payloads, "transport")
    for index, (received, payload) in enumerate(zip(results, payloads)):
        assert_same_bytes(received, xor_bytes(payload), f"connection {index}\n{chain.logs()}")
    assert not chain.dead(), f"a process died: {chain.dead()}\n{chain.logs()}"


@pytest.mark.parametrize("client, server", [("v2sync", "v2ray"), ("v2ray", "v2sync")])
def test_an_at_path_is_an_abstract_name_as_in_4_34(client: str, server: str,
                                                   echo: TcpEchoServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``"path": "@name"`` without ``abstract`` is the abstract name ``name`` (Go's syscall
    reads a leading @ as the NUL), the same socket as ``"path": "name", "abstract": true``;
    v2sync made a file called ``@name``. Each program locks ``@name.lock`` in its working
    directory, as 4.34 does when ``abstract`` is off."""
    from scenarios.vmess_helpers import start_chain

    monkeypatch.chdir(tmp_path)
    name = f"v2sync-at-{os.urandom(4).hex()}"
    at_path = {"network": "domainsocket", "dsSettings": {"path": "@" + name}}
    flagged = {"network": "domainsocket", "dsSettings": {"path": name, "abstract": True}}
    streams = (at_path, flagged) if server == "v2sync" else (flagged, at_path)  # v2sync: @
    chain = start_chain(ChainKey(client, server, "aes-128-gcm", 0, "ds-at"), lambda _: streams)
    try:
        with open_tunnel(chain.socks_port, echo.address) as sock:
            payload = os.urandom(4096)
            assert_same_bytes(exchange(sock, payload), xor_bytes(payload), chain.logs())
        assert not (tmp_path / ("@" + name)).exists()  # no file: the name is abstract
    finally:
        chain.client.stop(check=client == "v2sync")
        chain.server.stop(check=server == "v2sync")
