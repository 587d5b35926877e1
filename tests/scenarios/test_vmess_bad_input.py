"""Misbehaving clients against the VMess inbound (issue 3, "Bad input").

Each scripted peer sends garbage, a truncated header, a header from an unknown user, one with
an expired (or future) timestamp, a tampered header, or a replay of a header the server has
already accepted. For each: the client sees EOF and never a byte of data; the server drains
before closing, as 4.34 does (server.go drainConnection), so a short probe is held until the
handshake deadline and a long one is cut once the drain size is read, never later than the
deadline plus slack; the event is logged once; nothing reaches the origin; a good client is
served right afterwards; and threads and fds return to their baseline.

Also: ``disableInsecureEncryption`` refuses security none and legacy aes-128-cfb (and still
serves aes-128-gcm), and a 1,000-user inbound accepts the last user's header.

The instance runs in this process (threads and fds are counted here) with a 2 s handshake
policy. Headers are built with v2sync's own codec (``RawVMessClient``): these tests need
bytes they control; interop with the real v2ray is test_vmess_interop.py's job.
"""
from __future__ import annotations

import logging
import socket
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, List, Tuple

import pytest
from scenarios.helpers_scenarios import (connect, make_config, port_of, read_until_closed,
                                         running_instance, wait_idle)
from scenarios.vmess_helpers import (IMPLEMENTATIONS, STRANGER_ID, USER_ID, RawVMessClient,
                                     make_process, server_config, tcp_request,
                                     vmess_client_entry, vmess_inbound)
from support.peers import XOR_C, TcpEchoServer, free_port, xor_bytes
from support.resources import snapshot, wait_for_snapshot

from v2sync.app.log.access import ACCESS_LOGGER
from v2sync.core import Instance
from v2sync.proxy.vmess.encoding import Command
from v2sync.proxy.vmess.ids import Security, VMessUser, format_uuid, random_uuid_bytes
from v2sync.proxy.vmess.validator import RequestHeaderDecoder, SessionHistory, UserTable

HANDSHAKE_SECONDS = 2
# "closed by the handshake deadline at the latest": the deadline plus scheduling slack.
CLOSE_LIMIT = HANDSHAKE_SECONDS + 2.0
# A probe shorter than the drain size is held until the deadline; allow early scheduling.
DRAIN_HELD_AT_LEAST = HANDSHAKE_SECONDS / 2
# validator.py: the drain size is at most 3265 + 16 + 38 + 64 bytes; send well past it.
PAST_DRAIN_SIZE = 8 * 1024
TIME_SKEW = 300  # seconds: far outside the +-120 s AuthID window
PAYLOAD = b"good client payload " * 50
MANY_USERS = 1000
DECODE_SAMPLES = 20
SETTLE_TIMEOUT = 15.0

USER = VMessUser.from_text(USER_ID)
STRANGER = VMessUser.from_text(STRANGER_ID)


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpEchoServer]:
    with TcpEchoServer(xor=XOR_C, timeout=30.0) as server:
        yield server


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    config = make_config([vmess_inbound([vmess_client_entry()], tag="vmess-in"),
                          vmess_inbound([vmess_client_entry()], tag="vmess-secure",
                                        disable_insecure=True)],
                         handshake=HANDSHAKE_SECONDS)
    # No linger after either side ends (4.34's default: 1 s after the client left), so the
    # settling between cases waits for nothing but the connections themselves.
    config["policy"]["levels"]["0"].update(uplinkOnly=0, downlinkOnly=0)
    with running_instance(config) as inst:
        yield inst


# -- helpers ----------------------------------------------------------------------------------

def good_exchange(port: int, echo: TcpEchoServer, security: Security = Security.AES128_GCM) -> None:
    """A well-behaved client: header + first chunk, then the XORed echo comes back."""
    client = RawVMessClient(USER, tcp_request(echo.address, security))
    with connect(port) as sock:
        sock.sendall(client.first_flight(PAYLOAD))
        assert client.read_response(sock, len(PAYLOAD)) == xor_bytes(PAYLOAD)


def settle(instance: Instance, echo: TcpEchoServer) -> None:
    """No live connection in the instance, and none left at the origin."""
    wait_idle(instance, SETTLE_TIMEOUT)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while echo.active_connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert echo.active_connections == 0, "origin connections left open"


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server will take; a server done draining may reset us (allowed)."""
    try:
        sock.sendall(data)
    except OSError:
        pass


@dataclass(frozen=True)
class Probe:
    """What one bad connection saw: its source port, bytes received, seconds until closed."""

    port: int
    received: bytes
    seconds: float


def probe(port: int, data: bytes) -> Probe:
    """Connect, send ``data``, keep the write side open and wait for the server to close."""
    with connect(port) as sock:
        source_port = sock.getsockname()[1]
        started = time.monotonic()
        send_quietly(sock, data)
        received = read_until_closed(sock, CLOSE_LIMIT)  # AssertionError if still open
        return Probe(source_port, received, time.monotonic() - started)


def records_about(caplog: pytest.LogCaptureFixture, source_port: int,
                  logger: str = "v2sync") -> List[logging.LogRecord]:
    """v2sync's INFO-or-louder records that name the connection from ``source_port``: the
    error log's by default (the access log, ``v2sync.access``, is asked for by name)."""
    marker = f"127.0.0.1:{source_port}"
    return [r for r in caplog.records
            if r.name.startswith(logger) and (r.name == ACCESS_LOGGER) == (logger == ACCESS_LOGGER)
            and r.levelno >= logging.INFO and marker in r.getMessage()]


def assert_rejected(result: Probe, caplog: pytest.LogCaptureFixture, reason: str) -> None:
    assert result.received == b"", f"server sent data to a bad client: {result.received[:64]!r}"
    assert result.seconds < CLOSE_LIMIT
    logged = records_about(caplog, result.port)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert reason in logged[0].getMessage().lower(), logged[0].getMessage()
    access = records_about(caplog, result.port, ACCESS_LOGGER)  # 4.34's "rejected" line
    assert [" rejected  " in r.getMessage() for r in access] == [True], access


# -- the bad peers ----------------------------------------------------------------------------

Target = Tuple[str, int]


def garbage(target: Target) -> bytes:
    return bytes((i * 37 + 11) % 256 for i in range(64))


def garbage_past_drain_size(target: Target) -> bytes:
    return bytes((i * 91 + 5) % 256 for i in range(PAST_DRAIN_SIZE))


def truncated_header(target: Target) -> bytes:
    return RawVMessClient(USER, tcp_request(target)).header_bytes()[:20]


def unknown_user(target: Target) -> bytes:
    return RawVMessClient(STRANGER, tcp_request(target)).first_flight(PAYLOAD)


def expired_timestamp(target: Target) -> bytes:
    return RawVMessClient(USER, tcp_request(target)).first_flight(PAYLOAD, time.time() - TIME_SKEW)


def future_timestamp(target: Target) -> bytes:
    return RawVMessClient(USER, tcp_request(target)).first_flight(PAYLOAD, time.time() + TIME_SKEW)


def tampered_header(target: Target) -> bytes:
    client = RawVMessClient(USER, tcp_request(target))
    header = bytearray(client.header_bytes())
    header[-1] ^= 0x01  # the sealed header's GCM tag
    return bytes(header) + client.body(PAYLOAD)


@dataclass(frozen=True)
class BadCase:
    build: Callable[[Target], bytes]
    reason: str          # in the (lower-cased) log line
    held_to_deadline: bool  # fewer bytes than the drain size: the server waits for more


BAD_CASES = [
    BadCase(garbage, "invalid user", True),
    BadCase(garbage_past_drain_size, "invalid user", False),
    BadCase(truncated_header, "timed out", True),
    BadCase(unknown_user, "invalid user", True),
    BadCase(expired_timestamp, "invalid user", True),
    BadCase(future_timestamp, "invalid user", True),
    BadCase(tampered_header, "aead header", True),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.build.__name__ for c in BAD_CASES])
def test_bad_client_is_drained_logged_and_forgotten(case: BadCase, instance: Instance,
                                                    echo: TcpEchoServer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="v2sync")
    port = port_of(instance, "vmess-in")
    good_exchange(port, echo)  # warm up whatever starts lazily
    settle(instance, echo)
    before, accepted = snapshot(), echo.accepted

    result = probe(port, case.build(echo.address))
    settle(instance, echo)
    assert_rejected(result, caplog, case.reason)
    if case.held_to_deadline:  # drained: a prober learns nothing from an early close
        assert result.seconds >= DRAIN_HELD_AT_LEAST, result
    else:  # the drain size was reached: closed at once, not at the deadline
        assert result.seconds < HANDSHAKE_SECONDS, result
    assert echo.accepted == accepted, "a bad client reached the origin"

    good_exchange(port, echo)
    settle(instance, echo)
    wait_for_snapshot(before, SETTLE_TIMEOUT)


def test_replayed_header_is_rejected(instance: Instance, echo: TcpEchoServer,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="v2sync")
    port = port_of(instance, "vmess-in")
    good_exchange(port, echo)
    settle(instance, echo)
    before, accepted = snapshot(), echo.accepted

    client = RawVMessClient(USER, tcp_request(echo.address))
    wire = client.first_flight(PAYLOAD)
    with connect(port) as sock:  # the original is accepted and served
        sock.sendall(wire)
        assert client.read_response(sock, len(PAYLOAD)) == xor_bytes(PAYLOAD)
    settle(instance, echo)
    result = probe(port, wire)  # the same bytes on a second connection
    settle(instance, echo)
    assert_rejected(result, caplog, "replay")
    assert result.seconds >= DRAIN_HELD_AT_LEAST, result
    assert echo.accepted == accepted + 1, "the replay reached the origin"

    good_exchange(port, echo)
    settle(instance, echo)
    wait_for_snapshot(before, SETTLE_TIMEOUT)


# -- disableInsecureEncryption ----------------------------------------------------------------

@pytest.mark.parametrize("security", [Security.NONE, Security.LEGACY], ids=["none", "aes-128-cfb"])
def test_disable_insecure_encryption_refuses(security: Security, instance: Instance,
                                             echo: TcpEchoServer,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="v2sync")
    secure_port = port_of(instance, "vmess-secure")
    client = RawVMessClient(USER, tcp_request(echo.address, security))
    accepted = echo.accepted
    result = probe(secure_port, client.first_flight(PAYLOAD))
    settle(instance, echo)
    assert_rejected(result, caplog, "insecure")
    assert echo.accepted == accepted
    good_exchange(secure_port, echo)  # aes-128-gcm is still served on that inbound
    good_exchange(port_of(instance, "vmess-in"), echo, security)  # and the insecure one elsewhere


# -- many users -------------------------------------------------------------------------------

def _decode_ms(table: UserTable, target: Target) -> float:
    """Milliseconds to decode one fresh header of the last user (its own session history)."""
    header = RawVMessClient(USER, tcp_request(target)).header_bytes()
    started = time.perf_counter()
    decoded = RequestHeaderDecoder(table, SessionHistory()).decode(header)
    elapsed = (time.perf_counter() - started) * 1000
    assert decoded is not None and decoded[0].user.uuid == USER.uuid
    return elapsed


def test_thousand_user_inbound_accepts_the_last_user(echo: TcpEchoServer) -> None:
    clients = [vmess_client_entry(format_uuid(random_uuid_bytes())) for _ in range(MANY_USERS - 1)]
    clients.append(vmess_client_entry(USER_ID))
    started = time.perf_counter()
    with running_instance(make_config([vmess_inbound(clients, tag="many")],
                                      handshake=HANDSHAKE_SECONDS)) as inst:
        build_seconds = time.perf_counter() - started
        inbound = inst.inbounds.get("many")
        assert inbound is not None
        table = inbound.proxy.users
        assert len(table) == MANY_USERS
        samples = [_decode_ms(table, echo.address) for _ in range(DECODE_SAMPLES)]
        print(f"\n{MANY_USERS}-user inbound: built in {build_seconds:.2f} s; last user's AEAD "
              f"header decoded in {min(samples):.3f} ms best, {statistics.median(samples):.3f} ms "
              f"median of {DECODE_SAMPLES} (not asserted)")
        good_exchange(port_of(inst, "many"), echo)


GOOD_THEN_BAD = b"hello"
UNPADDED = 0x05  # chunk stream + masking: a chunk's last byte is its tag's


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_bad_chunk_does_not_lose_the_good_one_read_with_it_as_in_4_34(
        v2ray_bin: str, implementation: str) -> None:
    """A good chunk and a tampered one in one segment: the good one reaches the origin (4.34
    skips the bad chunk and goes on; v2sync ends the connection there, on purpose)."""
    with TcpEchoServer() as origin:
        port = free_port()
        with make_process(implementation, server_config(port, 0)), connect(port) as sock:
            request = replace(tcp_request(origin.address), option=UNPADDED)
            client = RawVMessClient(USER, request)
            first = client.first_flight(GOOD_THEN_BAD)
            bad = bytearray(client.body(b"bad"))
            bad[-1] ^= 1  # in its tag (no padding follows it)
            sock.sendall(first + bytes(bad))
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while origin.bytes_received < len(GOOD_THEN_BAD) and time.monotonic() < deadline:
                time.sleep(0.02)
    assert origin.bytes_received == len(GOOD_THEN_BAD), implementation


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_udp_to_port_0_ends_the_connection_as_in_4_34(v2ray_bin: str,
                                                      implementation: str) -> None:
    """freedom cannot send to port 0 (EINVAL): 4.34 ends the link at that failed write, and
    the client's connection with it, rather than holding it for connIdle (300 s)."""
    port = free_port()
    request = replace(tcp_request(("127.0.0.1", 0)), command=Command.UDP)
    with make_process(implementation, server_config(port, 0)), connect(port) as sock:
        client = RawVMessClient(USER, request)
        sock.sendall(client.first_flight(b"to port 0"))
        read_until_closed(sock, CLOSE_LIMIT)  # raises while it stays open
