"""Misbehaving clients against inbounds behind each transport (issues 2 and 4, "Bad input").

SOCKS inbounds over TLS, WebSocket, WebSocket+TLS, the HTTP header disguise and a domain
socket run in this process with a 1 s handshake policy. Garbage, a plain-HTTP probe and a
stalled handshake are each answered as 4.34 answers them (an alert, 400/404, or a close),
the listener keeps serving, and 1,000 such connections leave the thread count and open
fds at their baseline.
"""
from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator

import pytest
from scenarios.helpers_scenarios import make_config, read_until_closed, running_instance
from support.certs import Pki
from support.resources import snapshot, wait_for_snapshot

from v2sync.core import Instance

HANDSHAKE_SECONDS = 1
WS_HANDSHAKE_SECONDS = 4  # websocket/hub.go: fixed, whatever the policy says
IO_TIMEOUT = 10.0
BAD_CONNECTIONS = 1000
CONCURRENCY = 50
BASELINE_TIMEOUT = 20.0
WS_PATH = "/ws"
PROBES = [b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64]


def _streams(pki: Pki, socket_path: str) -> Dict[str, Dict[str, Any]]:
    tls = {"security": "tls", "tlsSettings": pki.server_tls()}
    ws = {"network": "ws", "wsSettings": {"path": WS_PATH}}
    return {"tls-in": tls, "ws-in": ws, "wss-in": {**ws, **tls},
            "header-in": {"tcpSettings": {"header": {"type": "http",
                                                     "request": {"path": ["/ok"]}}}},
            "ds-in": {"network": "ds", "dsSettings": {"path": socket_path}}}


@pytest.fixture(scope="module")
def instance(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    socket_path = str(tmp_path_factory.mktemp("ds") / "socks.sock")
    inbounds = [{"tag": tag, "protocol": "socks", "listen": "127.0.0.1", "port": 0,
                 "settings": {"auth": "noauth"}, "streamSettings": stream}
                for tag, stream in _streams(pki, socket_path).items()]
    with running_instance(make_config(inbounds, handshake=HANDSHAKE_SECONDS)) as inst:
        inst.socket_path = socket_path  # type: ignore[attr-defined]
        yield inst


def _address(instance: Instance, tag: str):
    if tag == "ds-in":
        return socket.AF_UNIX, instance.socket_path  # type: ignore[attr-defined]
    handler = instance.inbounds.get(tag)
    return socket.AF_INET, ("127.0.0.1", handler.ports()[0])


def _probe(instance: Instance, tag: str, data: bytes) -> bytes:
    family, address = _address(instance, tag)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.connect(address)
        try:
            sock.sendall(data)
        except OSError:
            pass  # already refused: allowed
        return read_until_closed(sock, IO_TIMEOUT)


def _socks_round_trip_works(instance: Instance, tag: str, tcp_echo) -> None:
    """The HTTP-header inbound with a real client: the disguise plus SOCKS through it."""
    family, address = _address(instance, tag)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.connect(address)
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x05\x01\x00")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"\x05\x00"):
            chunk = sock.recv(4096)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize("tag", ["tls-in", "ws-in", "wss-in", "header-in", "ds-in"])
@pytest.mark.parametrize("probe", PROBES, ids=["tls-junk", "plain-http", "zeros"])
def test_probe_is_refused_and_closed(instance: Instance, tag: str, probe: bytes) -> None:
    started = time.monotonic()
    answer = _probe(instance, tag, probe)
    assert time.monotonic() - started < WS_HANDSHAKE_SECONDS + 3
    if tag in ("ws-in",) and probe.startswith(b"GET"):
        assert answer.startswith(b"HTTP/1.1 404 ")  # not the configured path
    if tag == "header-in" and probe.startswith(b"GET"):
        assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n")


@pytest.mark.parametrize("tag, limit", [("tls-in", HANDSHAKE_SECONDS),
                                        ("header-in", HANDSHAKE_SECONDS),
                                        ("ws-in", WS_HANDSHAKE_SECONDS)])
def test_stalled_handshake_is_cut_at_its_deadline(instance: Instance, tag: str,
                                                  limit: int) -> None:
    started = time.monotonic()
    _probe(instance, tag, b"\x16\x03\x01" if tag == "tls-in" else b"GET /ok HTTP/1.1\r\n")
    elapsed = time.monotonic() - started
    assert limit - 0.5 < elapsed < limit + 3


def test_header_inbound_still_serves(instance: Instance, tcp_echo) -> None:
    _socks_round_trip_works(instance, "header-in", tcp_echo)


def test_thousand_bad_connections_leave_no_threads_or_fds(instance: Instance, tcp_echo) -> None:
    tags = ["tls-in", "ws-in", "wss-in", "header-in", "ds-in"]
    _probe(instance, "tls-in", PROBES[0])  # warm up whatever starts lazily
    time.sleep(0.5)
    before = snapshot()

    def one(i: int) -> bytes:
        return _probe(instance, tags[i % len(tags)], PROBES[i % len(PROBES)])

    with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="bad-transport") as pool:
        list(pool.map(one, range(BAD_CONNECTIONS)))
    deadline = time.monotonic() + BASELINE_TIMEOUT
    while instance.inbounds.live_count() and time.monotonic() < deadline:
        time.sleep(0.1)
    wait_for_snapshot(before, BASELINE_TIMEOUT)
    _socks_round_trip_works(instance, "header-in", tcp_echo)
