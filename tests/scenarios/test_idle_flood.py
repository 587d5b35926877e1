"""A connection costs a thread only once its handshake is complete (issue 14, item 1).

Silent connections, and connections stopped partway through each handshake (TCP, TLS, the
WebSocket upgrade, the SOCKS greeting, the VMess header), wait in the handshake selector:
the instance's thread count stays at its baseline while they are held, normal clients are
served meanwhile, and the handshake deadline still cuts them. When the process runs out of
file descriptors, the oldest unfinished handshakes are shed so new clients still get in.

The instance runs in this process, so its worker tasks are counted directly.
"""
from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from scenarios.helpers_scenarios import (connect, freedom, make_config, port_of, recv_exact,
                                         running_instance, socks_inbound, wait_idle)
from support.certs import Pki
from support.peers import TcpEchoServer, free_port
from support.procs import V2SyncProcess

IDLE_CONNECTIONS = 1000
GREETING_STALLED = 100
REQUESTS = 10
# Threads beyond the selector's waiting one while only unfinished handshakes are held:
# none (a short-lived worker may still be parking from the warm-up request).
SPARE_TASKS = 1
HANDSHAKE_SECONDS = 2
CUT_SLACK = 4.0
# The shedding test's process: few descriptors, more idle connections than fit.
FD_LIMIT = 200
SHED_FLOOD = 260


def socks_round_trip(port: int, echo: TcpEchoServer, payload: bytes = b"p" * 1024) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exact(sock, 2) == b"\x05\x00"
        host, echo_port = echo.address
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack(">H", echo_port))
        assert recv_exact(sock, 10)[:2] == b"\x05\x00"
        sock.sendall(payload)
        return recv_exact(sock, len(payload))


def open_many(port: int, count: int, first_bytes: bytes = b"") -> List[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first_bytes:
            sock.sendall(first_bytes)
        socks.append(sock)
    return socks


def busy_worker_tasks(instance) -> int:
    """Worker tasks besides the one waiting in the selector."""
    return len(instance.workers.live()) - 1


def wait_parked(instance, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while instance.inbounds.selector.parked_count() < count:
        assert time.monotonic() < deadline, \
            f"{instance.inbounds.selector.parked_count()} of {count} connections parked"
        time.sleep(0.05)


@pytest.fixture
def echo() -> Iterator[TcpEchoServer]:
    with TcpEchoServer(timeout=30.0) as server:
        yield server


def test_idle_and_stalled_connections_hold_no_thread(echo: TcpEchoServer) -> None:
    config = make_config([socks_inbound()], [freedom()])
    with running_instance(config) as instance:
        port = port_of(instance, "socks-in")
        socks_round_trip(port, echo)  # warm up the pool
        wait_idle(instance)
        held = open_many(port, IDLE_CONNECTIONS)
        held += open_many(port, GREETING_STALLED, b"\x05")  # a greeting cut short
        try:
            wait_parked(instance, IDLE_CONNECTIONS + GREETING_STALLED)
            assert busy_worker_tasks(instance) <= SPARE_TASKS, instance.workers.live()
            for _ in range(REQUESTS):
                assert socks_round_trip(port, echo) == b"p" * 1024
            assert instance.inbounds.selector.parked_count() == len(held)
        finally:
            for sock in held:
                sock.close()
        wait_idle(instance)


def _tls_socks_config(pki: Pki, network: str) -> Dict[str, Any]:
    inbound = socks_inbound(tag="tls-in")
    inbound["streamSettings"] = {"network": network, "security": "tls",
                                 "tlsSettings": pki.server_tls()}
    config = make_config([inbound, socks_inbound()], [freedom()])
    config["policy"] = {"levels": {"0": {"handshake": HANDSHAKE_SECONDS}}}
    return config


def _tls_client(pki: Pki, port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="v2sync.test")


def _stalled_at_each_step(pki: Pki, port: int, network: str) -> List[socket.socket]:
    """One connection stopped inside each handshake the inbound runs."""
    hello = socket.create_connection(("127.0.0.1", port), timeout=5)
    hello.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never finishes
    after_tls = _tls_client(pki, port)
    stalled = [hello, after_tls]
    if network == "ws":
        after_tls.sendall(b"GET / HTTP/1.1\r\nHost: v2sync.test\r\n")  # upgrade cut short
    else:
        after_tls.sendall(b"\x05\x01")  # SOCKS greeting cut short
    return stalled


@pytest.mark.parametrize("network", ["tcp", "ws"])
def test_connections_stalled_in_tls_and_upgrade_hold_no_thread(pki: Pki, echo, network) -> None:
    with running_instance(_tls_socks_config(pki, network)) as instance:
        port = port_of(instance, "tls-in")
        socks_round_trip(port_of(instance, "socks-in"), echo)
        wait_idle(instance)
        stalled = _stalled_at_each_step(pki, port, network)
        try:
            wait_parked(instance, len(stalled))
            assert busy_worker_tasks(instance) <= SPARE_TASKS, instance.workers.live()
            started = time.monotonic()
            for sock in stalled:  # the deadline cuts each of them
                sock.settimeout(HANDSHAKE_SECONDS + CUT_SLACK)
                with contextlib.suppress(ConnectionResetError, ssl.SSLError):
                    reply = _read_to_end(sock)
                    # Cut silently, or (stalled in the WebSocket upgrade) with the plain 400
                    # Go's net/http sends at its header timeout, as 4.34 does.
                    assert reply == b"" or reply.startswith(b"HTTP/1.1 400 Bad Request"), reply
            assert time.monotonic() - started < HANDSHAKE_SECONDS + CUT_SLACK
        finally:
            for sock in stalled:
                sock.close()
        wait_idle(instance)


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything until EOF (a reply is a few hundred bytes: a few reads at most)."""
    data = b""
    for _ in range(16):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class LimitedV2Sync(V2SyncProcess):
    """v2sync with a low descriptor limit (prlimit, util-linux)."""

    def command(self, config_path: Path) -> List[str]:
        return ["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", sys.executable, "-m", "v2sync",
                "run", "-c", str(config_path)]


def test_out_of_descriptors_sheds_the_oldest_handshakes(echo: TcpEchoServer) -> None:
    port = free_port()
    config = make_config([socks_inbound(port=port)], [freedom()])
    config["log"] = {"loglevel": "warning"}
    with LimitedV2Sync(config) as process:
        flood = open_many(port, SHED_FLOOD)
        try:
            process.wait_for_log("out of file descriptors; closing the", timeout=10)
            time.sleep(0.5)  # the flood's backlog settles
            assert socks_round_trip(port, echo) == b"p" * 1024
        finally:
            for sock in flood:
                sock.close()
