"""The SOCKS and HTTP outbounds against the real v2ray 4.34 inbounds (issue 17, parts 4-6).

    client (this test) -> [v2sync: socks in -> socks|http out over tcp|tls]
                       -> [v2ray: socks|http in -> freedom] -> in-test origins

SOCKS5 with username/password over TCP and over TLS (the "Socks5-TLS" chain), and without
auth; CONNECT (parallel connections and 2 MiB through an XOR echo) and UDP ASSOCIATE.
HTTP CONNECT with Basic auth over TCP. Wrong credentials fail the link. A v2ray client in
the same chain is the control that proves the harness.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Dict, Iterator, Optional

import pytest
import socks
from scenarios.vmess_helpers import (IO_TIMEOUT, assert_same_bytes, exchange,
                                     exchange_in_parallel, make_process, open_tunnel)
from support.certs import Pki
from support.peers import MIB, XOR_C, TcpEchoServer, UdpEchoServer, free_port, xor_bytes

USER, PASSWORD = "chain-user", "chain-pass"
PARALLEL = 6
PARALLEL_BYTES = 128 * 1024
BULK_BYTES = 2 * MIB
DATAGRAMS = 8
LOG = {"loglevel": "warning", "access": "none"}

# (outbound protocol, transport, with credentials, client implementation)
CASES = [("socks", "tcp", True, "v2sync"), ("socks", "tls", True, "v2sync"),
         ("socks", "tcp", False, "v2sync"), ("http", "tcp", True, "v2sync"),
         ("socks", "tls", True, "v2ray"), ("http", "tcp", True, "v2ray")]


def _case_id(case) -> str:
    protocol, transport, auth, client = case
    return f"{client}-{protocol}-{transport}{'-auth' if auth else ''}"


def server_inbound(protocol: str, port: int, auth: bool) -> Dict[str, Any]:
    accounts = [{"user": USER, "pass": PASSWORD}] if auth else []
    if protocol == "socks":
        settings: Dict[str, Any] = {"auth": "password" if auth else "noauth", "udp": True,
                                    "ip": "127.0.0.1", "accounts": accounts}
    else:
        settings = {"accounts": accounts}
    return {"tag": "in", "protocol": protocol, "listen": "127.0.0.1", "port": port,
            "settings": settings}


def chain_outbound(protocol: str, port: int, auth: bool, password: str = PASSWORD
                   ) -> Dict[str, Any]:
    server: Dict[str, Any] = {"address": "127.0.0.1", "port": port}
    if auth:
        server["users"] = [{"user": USER, "pass": password}]
    return {"tag": "chain", "protocol": protocol, "settings": {"servers": [server]}}


class Chain:
    def __init__(self, protocol: str, transport: str, auth: bool, client: str, pki: Pki,
                 password: str = PASSWORD):
        self.proxy_port, self.socks_port = free_port(), free_port()
        inbound = server_inbound(protocol, self.proxy_port, auth)
        outbound = chain_outbound(protocol, self.proxy_port, auth, password)
        if transport == "tls":
            inbound["streamSettings"] = {"security": "tls", "tlsSettings": pki.server_tls()}
            outbound["streamSettings"] = {"security": "tls", "tlsSettings": pki.client_tls()}
        self.server = make_process("v2ray", {"log": LOG, "inbounds": [inbound],
                                             "outbounds": [{"protocol": "freedom"}]}).start()
        socks_in = {"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1",
                    "port": self.socks_port, "settings": {"udp": True, "ip": "127.0.0.1"}}
        try:
            self.client = make_process(client, {"log": LOG, "inbounds": [socks_in],
                                                "outbounds": [outbound]}).start()
        except BaseException:
            self.server.stop(check=False)
            raise

    def logs(self) -> str:
        return f"--- client ---\n{self.client.log_tail()}\n--- server ---\n{self.server.log_tail()}"

    def close(self) -> None:
        self.client.stop(check=self.client.name == "v2sync")
        self.server.stop(check=False)


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpEchoServer]:
    with TcpEchoServer(xor=XOR_C, timeout=60.0) as server:
        yield server


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_tcp_parallel_and_bulk(case, pki: Pki, echo: TcpEchoServer) -> None:
    chain = Chain(*case, pki=pki)
    try:
        payloads = [os.urandom(PARALLEL_BYTES) for _ in range(PARALLEL)]
        results = exchange_in_parallel(chain.socks_port, echo.address, payloads, "chain")
        for index, (received, payload) in enumerate(zip(results, payloads)):
            assert_same_bytes(received, xor_bytes(payload), f"connection {index}\n{chain.logs()}")
        payload = os.urandom(BULK_BYTES)
        with open_tunnel(chain.socks_port, echo.address) as sock:
            assert_same_bytes(exchange(sock, payload), xor_bytes(payload), chain.logs())
    finally:
        chain.close()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_udp_associate_through_the_socks_outbound(transport: str, pki: Pki) -> None:
    chain = Chain("socks", transport, True, "v2sync", pki)
    try:
        with UdpEchoServer(xor=XOR_C) as udp_echo:
            with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.set_proxy(socks.SOCKS5, "127.0.0.1", chain.socks_port)
                sock.settimeout(IO_TIMEOUT / 2)
                for i in range(DATAGRAMS):
                    payload = os.urandom(1 + i * 100)
                    sock.sendto(payload, udp_echo.address)
                    try:
                        data, source = sock.recvfrom(4096)
                    except socket.timeout:
                        raise AssertionError(f"no reply to datagram {i}\n{chain.logs()}") from None
                    assert data == xor_bytes(payload) and source == udp_echo.address
            assert udp_echo.datagrams == DATAGRAMS
    finally:
        chain.close()


def _tunnel_answer(socks_port: int, target, payload: bytes) -> Optional[bytes]:
    """What comes back through a tunnel that the outbound may fail (None: nothing)."""
    with open_tunnel(socks_port, target) as sock:
        sock.sendall(payload)
        sock.settimeout(IO_TIMEOUT / 2)
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return None
        return data or None


@pytest.mark.parametrize("protocol", ["socks", "http"])
def test_wrong_credentials_fail_the_link(protocol: str, pki: Pki) -> None:
    chain = Chain(protocol, "tcp", True, "v2sync", pki, password="wrong")
    try:
        with TcpEchoServer(xor=XOR_C) as origin:
            assert _tunnel_answer(chain.socks_port, origin.address, b"hello") is None, \
                chain.logs()
            assert origin.accepted == 0  # v2ray refused the account: nothing reached it
    finally:
        chain.close()


@pytest.mark.parametrize("client, server", [("v2sync", "v2ray"), ("v2ray", "v2sync")])
def test_mux_over_the_socks_outbound(client: str, server: str, pki: Pki,
                                     echo: TcpEchoServer) -> None:
    """A SOCKS outbound with mux asks for v1.mux.cool:9527 (4.34 does); the SOCKS inbound
    on the other side serves it as Mux.cool, as every inbound does."""
    proxy_port, socks_port = free_port(), free_port()
    inbound = server_inbound("socks", proxy_port, True)
    outbound = chain_outbound("socks", proxy_port, True)
    outbound["mux"] = {"enabled": True, "concurrency": PARALLEL}
    server_process = make_process(server, {"log": {"loglevel": "warning"}, "inbounds": [inbound],
                                           "outbounds": [{"protocol": "freedom"}]}).start()
    socks_in = {"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1",
                "port": socks_port, "settings": {}}
    try:
        client_process = make_process(client, {"log": LOG, "inbounds": [socks_in],
                                                "outbounds": [outbound]}).start()
        try:
            payloads = [os.urandom(PARALLEL_BYTES) for _ in range(PARALLEL)]
            results = exchange_in_parallel(socks_port, echo.address, payloads, "socks-mux")
            for received, payload in zip(results, payloads):
                assert_same_bytes(received, xor_bytes(payload), server_process.log_tail())
            text = server_process.log_text()  # access lines: one source for every target line
            sources = {line.split(" accepted ")[0].split()[-1] for line in text.splitlines()
                       if f":{echo.port}" in line and " accepted " in line}
            assert len(sources) == 1, text
        finally:
            client_process.stop(check=client == "v2sync")
    finally:
        server_process.stop(check=server == "v2sync")
