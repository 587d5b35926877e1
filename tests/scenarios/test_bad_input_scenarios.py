"""Misbehaving clients against the HTTP and SOCKS inbounds (issue 2, "Bad input").

Each scripted peer sends garbage, a truncated handshake, an oversized HTTP head or a
handshake that never finishes. The client gets the protocol's error reply where one exists
(as 4.34 answers: nothing for an HTTP head that does not parse, a SOCKS failure code or nothing for SOCKS), the connection is closed by the
handshake deadline at the latest, the event is logged, and the listener keeps serving. Then
1,000 such connections must leave the thread count and open fds at their baseline.

The instance runs in this process (threads and fds are counted here) with a 1 s handshake
policy so the slow peers are cut quickly.
"""
from __future__ import annotations

import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Tuple

import pytest
from scenarios.helpers_scenarios import (closed_within, connect, curl_ok, http_inbound,
                                         make_config, port_of, read_until_closed, recv_exact,
                                         running_instance, socks_inbound, wait_idle)
from support.peers import HttpOrigin
from support.resources import snapshot, wait_for_snapshot

from v2sync.core import Instance

HANDSHAKE_SECONDS = 1
# "closed by the handshake deadline at the latest": the deadline plus scheduling slack.
CLOSE_LIMIT = HANDSHAKE_SECONDS + 2.0
OVERSIZED_HEAD = 65 * 1024  # past the 64 KiB cap (encoding.MAX_HEAD)
TRICKLE_INTERVAL = 0.2
BAD_CONNECTIONS = 1000
CONCURRENCY = 50
BASELINE_TIMEOUT = 15.0

BadPeer = Callable[[int], None]


@pytest.fixture
def instance() -> Iterator[Instance]:
    config = make_config([http_inbound(), socks_inbound()], handshake=HANDSHAKE_SECONDS)
    with running_instance(config) as inst:
        yield inst


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server will take; it may already have closed on us (that is allowed)."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def _assert_closed_silently(data: bytes) -> None:
    """4.34 answers a head Go cannot parse with a close and no bytes (checked against the
    binary in test_inbound_replies_differential.py)."""
    assert data == b"", data[:200]


# -- HTTP peers -------------------------------------------------------------------------------

def http_garbage(port: int) -> None:
    with connect(port) as sock:
        _send_quietly(sock, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfcgarbage\r\n\r\n")
        _assert_closed_silently(read_until_closed(sock, CLOSE_LIMIT))


def http_bad_request_line(port: int) -> None:
    with connect(port) as sock:
        _send_quietly(sock, b"THIS IS NOT HTTP\r\n\r\n")
        _assert_closed_silently(read_until_closed(sock, CLOSE_LIMIT))


def http_truncated(port: int) -> None:
    """Half a head, then EOF: closed, with nothing sent."""
    with connect(port) as sock:
        _send_quietly(sock, b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Half: ")
        sock.shutdown(socket.SHUT_WR)
        data = read_until_closed(sock, CLOSE_LIMIT)
        _assert_closed_silently(data)


def http_oversized(port: int) -> None:
    head = (b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Pad: "
            + b"a" * OVERSIZED_HEAD + b"\r\n\r\n")
    with connect(port) as sock:
        _send_quietly(sock, head)
        _assert_closed_silently(read_until_closed(sock, CLOSE_LIMIT))


def http_slow(port: int) -> None:
    """A head trickled byte by byte, never finished: cut at the handshake deadline."""
    started = time.monotonic()
    with connect(port) as sock:
        _send_quietly(sock, b"GET http://127.0.0.1:9/ HTTP/1.1\r\n")
        _trickle_until_closed(sock, b"X-Slow: ", started)


def _trickle_until_closed(sock: socket.socket, drip: bytes, started: float) -> None:
    """Send one byte every TRICKLE_INTERVAL until the server closes; assert it did in time."""
    sock.setblocking(False)
    try:
        for i in range(int(CLOSE_LIMIT / TRICKLE_INTERVAL) + 1):
            try:
                sock.send(drip[i % len(drip):i % len(drip) + 1])
                if sock.recv(4096) == b"":
                    break
            except BlockingIOError:
                pass
            except OSError:
                break  # reset or broken pipe: closed
            time.sleep(TRICKLE_INTERVAL)
    finally:
        sock.setblocking(True)
    read_until_closed(sock, max(CLOSE_LIMIT - (time.monotonic() - started), 0.1))
    assert time.monotonic() - started < CLOSE_LIMIT + TRICKLE_INTERVAL


def http_silent(port: int) -> None:
    """Connects and sends nothing: cut at the handshake deadline."""
    with connect(port) as sock:
        assert closed_within(sock, CLOSE_LIMIT) < CLOSE_LIMIT


def connect_and_close(port: int) -> None:
    with connect(port):
        pass


# -- SOCKS peers ------------------------------------------------------------------------------

def _assert_socks_failure_or_nothing(data: bytes) -> None:
    if data:  # a SOCKS5 or SOCKS4 failure reply, never a success
        assert data[0] in (0x00, 0x05), data[:40]
        assert data[1] not in (0x00, 0x5A), data[:40]


def socks_garbage(port: int) -> None:
    with connect(port) as sock:
        _send_quietly(sock, b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n")
        _assert_socks_failure_or_nothing(read_until_closed(sock, CLOSE_LIMIT))


def socks_bad_request(port: int) -> None:
    """A valid greeting, then a request with an unknown address type."""
    with connect(port) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exact(sock, 2) == b"\x05\x00"
        _send_quietly(sock, b"\x05\x01\x00\x09" + b"\xee" * 32)
        _assert_socks_failure_or_nothing(read_until_closed(sock, CLOSE_LIMIT))


def socks_truncated(port: int) -> None:
    """The greeting promises two methods and gives one, then EOF."""
    with connect(port) as sock:
        _send_quietly(sock, b"\x05\x02\x00")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock, CLOSE_LIMIT) == b""


def socks_truncated_request(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exact(sock, 2) == b"\x05\x00"
        _send_quietly(sock, b"\x05\x01\x00\x03\x20short")  # domain says 32 bytes, gives 5
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock, CLOSE_LIMIT) == b""


def socks_oversized(port: int) -> None:
    """20 KiB of junk behind a SOCKS5 version byte."""
    with connect(port) as sock:
        _send_quietly(sock, b"\x05\x01\x00\x05\x01\x00\x03" + b"\xff" * (20 * 1024))
        data = read_until_closed(sock, CLOSE_LIMIT)
        assert data[:2] in (b"", b"\x05\x00"), data[:40]  # at most the method selection
        _assert_socks_failure_or_nothing(data[2:])


def socks_slow(port: int) -> None:
    started = time.monotonic()
    with connect(port) as sock:
        _send_quietly(sock, b"\x05")
        _trickle_until_closed(sock, b"\x7f", started)  # "127 methods", one at a time


HTTP_PEERS: List[BadPeer] = [http_garbage, http_bad_request_line, http_truncated, http_oversized,
                             http_slow, http_silent, connect_and_close]
SOCKS_PEERS: List[BadPeer] = [socks_garbage, socks_bad_request, socks_truncated,
                              socks_truncated_request, socks_oversized, socks_slow, http_silent,
                              connect_and_close]
CASES: List[Tuple[str, BadPeer]] = ([("http-in", p) for p in HTTP_PEERS]
                                    + [("socks-in", p) for p in SOCKS_PEERS])


def _good_request(instance: Instance, origin: HttpOrigin) -> None:
    http_port, socks_port = port_of(instance, "http-in"), port_of(instance, "socks-in")
    assert curl_ok("-x", f"http://127.0.0.1:{http_port}", origin.url + "/") == b"Home"
    assert curl_ok("--socks5-hostname", f"127.0.0.1:{socks_port}",
                   f"http://localhost:{origin.port}/") == b"Home"


@pytest.mark.parametrize("tag, peer", CASES, ids=[f"{tag}-{peer.__name__}" for tag, peer in CASES])
def test_bad_peer_then_listener_still_serves(tag: str, peer: BadPeer, instance: Instance,
                                             http_origin: HttpOrigin) -> None:
    peer(port_of(instance, tag))
    _good_request(instance, http_origin)
    assert http_origin.requests[-1].path == "/"
    assert len(http_origin.requests) == 2  # nothing from the bad peer reached the origin


@pytest.mark.parametrize("tag, peer", [("http-in", http_slow), ("socks-in", socks_slow)])
def test_slow_handshake_is_logged(tag: str, peer: BadPeer, instance: Instance,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="v2sync")
    peer(port_of(instance, tag))
    wait_idle(instance)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("v2sync")]
    assert any("timed out" in m for m in messages), messages


def test_garbage_is_logged(instance: Instance, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="v2sync")
    http_garbage(port_of(instance, "http-in"))
    socks_garbage(port_of(instance, "socks-in"))
    wait_idle(instance)
    ended = [r for r in caplog.records if r.name.startswith("v2sync") and r.levelno >= logging.INFO]
    messages = [r.getMessage() for r in ended]
    # One line per garbage connection, naming its inbound and what was wrong with the bytes.
    assert [m for m in messages if m.startswith("http-in#") and "invalid HTTP request line" in m], messages
    assert [m for m in messages if m.startswith("socks-in#") and "unknown SOCKS version 71" in m], messages  # "G"


def _run_case(index: int, instance_ports: Tuple[int, int]) -> None:
    tag, peer = CASES[index % len(CASES)]
    peer(instance_ports[0] if tag == "http-in" else instance_ports[1])


def test_thousand_bad_connections_leave_no_threads_or_fds(instance: Instance,
                                                          http_origin: HttpOrigin) -> None:
    _good_request(instance, http_origin)  # warm up whatever starts lazily
    wait_idle(instance)
    before = snapshot()
    ports = (port_of(instance, "http-in"), port_of(instance, "socks-in"))
    with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="bad-peer") as pool:
        # list() re-raises the first failed assertion of any peer
        list(pool.map(lambda i: _run_case(i, ports), range(BAD_CONNECTIONS)))
    wait_idle(instance, BASELINE_TIMEOUT)
    wait_for_snapshot(before, BASELINE_TIMEOUT)
    _good_request(instance, http_origin)
