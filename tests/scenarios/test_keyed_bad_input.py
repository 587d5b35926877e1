"""Bad input against the VLESS and Trojan inbounds (issue 15 part 7).

- With a fallback, a wrong UUID or password goes to it: the fallback receives the PROXY
  header of ``xver`` and then every byte the client sent, unchanged. v2ray 4.34 runs the
  same config on the same input, and both must deliver exactly the bytes that v2sync's
  PROXY encoders produce for that connection.
- Without one, both implementations close at once without a byte.
- Truncated and garbage headers close; then 1,000 bad connections leave the thread and
  fd counts at their baseline (the instance runs in this process).
"""
from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List

import pytest
from scenarios.helpers_scenarios import (connect, make_config, port_of, read_until_closed,
                                         running_instance, wait_idle)
from scenarios.keyed_helpers import PASSWORD, STRANGER_ID, USER_ID, server_config, server_inbound
from scenarios.vmess_helpers import make_process
from support.peers import XOR_C, TcpEchoServer, UdpEchoServer, _TcpServer, free_port
from support.resources import snapshot, wait_for_snapshot

from v2sync.common.net import Address, Destination
from v2sync.common.protocol.packets import encode_trojan_packets, parse_trojan_packet
from v2sync.common.protocol.proxy_protocol import encode
from v2sync.proxy.trojan.encoding import Command as TrojanCommand
from v2sync.proxy.trojan.encoding import RequestHeader as TrojanHeader
from v2sync.proxy.trojan.encoding import encode_request_header as trojan_header
from v2sync.proxy.trojan.encoding import password_key
from v2sync.proxy.vless.encoding import Command, RequestHeader, encode_request_header
from v2sync.proxy.vmess.ids import parse_uuid
from v2sync.transport.copy import PARK_AFTER

IO_TIMEOUT = 10.0
CLOSE_LIMIT = 3.0
BAD_CONNECTIONS = 1000
CONCURRENCY = 20
BASELINE_TIMEOUT = 20.0
REQUEST = b"GET /probe HTTP/1.1\r\nHost: example.com\r\n\r\n"


def _bad_header(protocol: str) -> bytes:
    if protocol == "vless":
        return b"\x00" + parse_uuid(STRANGER_ID) + b"\x00\x01\x00\x50\x01\x7f\x00\x00\x01"
    return password_key("wrong password") + b"\r\n\x01\x01\x7f\x00\x00\x01\x00\x50\r\n"


class Recorder(_TcpServer):
    """Records what each connection sends until it ends with ``REQUEST``, then answers."""

    def __init__(self) -> None:
        super().__init__("recorder", "127.0.0.1", 16, IO_TIMEOUT)
        self.received: List[bytes] = []

    def handle(self, conn: socket.socket) -> None:
        self.received.append(record_request(conn))


def record_request(conn: socket.socket) -> bytes:
    """Everything until it ends with REQUEST (or EOF); then the answer "recorded"."""
    data = b""
    while not data.endswith(REQUEST):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.sendall(b"recorded")
    return data


@pytest.mark.parametrize("protocol", ["vless", "trojan"])
@pytest.mark.parametrize("xver", [0, 1, 2])
def test_wrong_user_goes_to_the_fallback_as_in_4_34(protocol: str, xver: int) -> None:
    delivered = []
    with Recorder() as recorder:
        for implementation in ("v2sync", "v2ray"):
            port = free_port()
            inbound = server_inbound(protocol, port, {},
                                     fallbacks=[{"dest": recorder.port, "xver": xver}])
            with make_process(implementation, server_config(inbound)):
                with connect(port, timeout=IO_TIMEOUT) as sock:
                    wire = _bad_header(protocol) + REQUEST
                    sock.sendall(wire)
                    assert read_until_closed(sock, IO_TIMEOUT) == b"recorded"
                    source = Destination(Address.parse("127.0.0.1"), sock.getsockname()[1])
            head = encode(xver, source, Destination(Address.parse("127.0.0.1"), port)) \
                if xver else b""
            delivered.append(recorder.received[-1] == head + wire)
    assert delivered == [True, True]  # v2sync and v2ray sent the same bytes


@pytest.mark.parametrize("protocol", ["vless", "trojan"])
def test_wrong_user_without_fallback_closes_at_once_as_in_4_34(protocol: str) -> None:
    for implementation in ("v2sync", "v2ray"):
        port = free_port()
        with make_process(implementation, server_config(server_inbound(protocol, port, {}))):
            with connect(port, timeout=IO_TIMEOUT) as sock:
                sock.sendall(_bad_header(protocol) + REQUEST)  # the client stays open
                started = time.monotonic()
                assert read_until_closed(sock, CLOSE_LIMIT) == b"", implementation
                assert time.monotonic() - started < CLOSE_LIMIT


@pytest.mark.parametrize("protocol", ["vless", "trojan"])
def test_a_short_foreign_first_read_closes_at_once_as_in_4_34(protocol: str) -> None:
    """VLESS refuses the version byte; Trojan judges its first read (fewer than 58 bytes)
    even without fallbacks. Neither waits for the handshake deadline."""
    for implementation in ("v2sync", "v2ray"):
        port = free_port()
        with make_process(implementation, server_config(server_inbound(protocol, port, {}))):
            with connect(port, timeout=IO_TIMEOUT) as sock:
                sock.sendall(b"GET / HTTP/1.0\r\n")
                started = time.monotonic()
                assert read_until_closed(sock, CLOSE_LIMIT) == b"", implementation
                assert time.monotonic() - started < CLOSE_LIMIT


class Silent(_TcpServer):
    """An origin that reads the request and closes without a byte."""

    def __init__(self) -> None:
        super().__init__("silent", "127.0.0.1", 16, IO_TIMEOUT)

    def handle(self, conn: socket.socket) -> None:
        conn.recv(65536)


def _good_header(protocol: str, port: int) -> bytes:
    to = Address.parse("127.0.0.1")
    if protocol == "vless":
        return encode_request_header(RequestHeader(parse_uuid(USER_ID), Command.TCP, to, port))
    return trojan_header(TrojanHeader(password_key(PASSWORD), TrojanCommand.TCP, to, port))


UPLINK_ONLY = 4  # seconds: long enough to tell "at once" from "after uplinkOnly"


@pytest.mark.parametrize("protocol", ["vless", "trojan"])
def test_an_origin_that_answers_nothing_ends_the_connection_as_in_4_34(protocol: str) -> None:
    """VLESS: 4.34's ``getResponse`` fails when its first read is the EOF, and the
    connection closes at once, without a response header. Trojan ends its response
    normally, and the connection closes after uplinkOnly."""
    def waited(implementation: str, origin_port: int) -> bool:
        port = free_port()
        config = server_config(server_inbound(protocol, port, {}))
        config["policy"] = {"levels": {"0": {"uplinkOnly": UPLINK_ONLY}}}
        with make_process(implementation, config):
            with connect(port, timeout=IO_TIMEOUT) as sock:
                sock.sendall(_good_header(protocol, origin_port) + REQUEST)
                started = time.monotonic()
                assert read_until_closed(sock, UPLINK_ONLY + IO_TIMEOUT) == b""
                return time.monotonic() - started > UPLINK_ONLY - 1

    implementations = ("v2sync", "v2ray")
    with Silent() as origin, ThreadPoolExecutor(len(implementations)) as pool:  # both at once
        results = dict(zip(implementations,
                           pool.map(lambda name: waited(name, origin.port), implementations)))
    assert results == {"v2sync": protocol == "trojan", "v2ray": protocol == "trojan"}


def test_an_empty_trojan_datagram_is_not_sent_as_in_4_34() -> None:
    """4.34 reads a zero-length UDP packet as no buffers and sends nothing; the next
    packet is relayed as ever."""
    sent = {}
    with UdpEchoServer() as echo:
        target = Destination(Address.parse("127.0.0.1"), echo.port)
        for implementation in ("v2sync", "v2ray"):
            port = free_port()
            with make_process(implementation, server_config(server_inbound("trojan", port, {}))):
                before = echo.datagrams
                with connect(port, timeout=IO_TIMEOUT) as sock:
                    sock.sendall(trojan_header(TrojanHeader(
                        password_key(PASSWORD), TrojanCommand.UDP, target.address, target.port))
                        + encode_trojan_packets(target, b"")
                        + encode_trojan_packets(target, b"abc"))
                    answer = _first_trojan_packet(sock)
                sent[implementation] = (answer, echo.datagrams - before)
    assert sent == {"v2sync": (b"abc", 1), "v2ray": (b"abc", 1)}


def _first_trojan_packet(sock: socket.socket) -> bytes:
    data = b""
    for _ in range(64):  # the socket's timeout bounds each read
        parsed = parse_trojan_packet(data)
        if parsed is not None:
            return parsed[0].payload
        chunk = sock.recv(4096)
        assert chunk, "closed before an answer"
        data += chunk
    raise AssertionError(f"no whole packet in {len(data)} bytes")


class Banner(_TcpServer):
    """A fallback that speaks first (an SSH server sharing the port), then waits for EOF."""

    BANNER = b"SSH-2.0-v2sync-test\r\n"

    def __init__(self) -> None:
        super().__init__("banner", "127.0.0.1", 16, IO_TIMEOUT)

    def handle(self, conn: socket.socket) -> None:
        conn.sendall(self.BANNER)
        while conn.recv(65536):
            pass


HANDSHAKE = 1  # seconds: the policy's handshake deadline in the silent-client test


@pytest.mark.parametrize("protocol", ["vless", "trojan"])
@pytest.mark.parametrize("client", ["silent", "closes"])
def test_a_client_that_sends_nothing_meets_the_fallback_as_in_4_34(protocol: str,
                                                                   client: str) -> None:
    """VLESS's first read ignores its error: a client silent until the handshake deadline,
    or one that shuts its side at once, goes to the fallback, whose banner then reaches
    it. Trojan closes in both cases."""
    heard = {}
    with Banner() as banner:
        for implementation in ("v2sync", "v2ray"):
            port = free_port()
            config = server_config(server_inbound(protocol, port, {},
                                                  fallbacks=[{"dest": banner.port}]))
            config["policy"] = {"levels": {"0": {"handshake": HANDSHAKE}}}
            with make_process(implementation, config):
                with connect(port, timeout=IO_TIMEOUT) as sock:
                    if client == "closes":
                        sock.shutdown(socket.SHUT_WR)
                    heard[implementation] = _banner_or_close(sock)
    expected = Banner.BANNER if protocol == "vless" else b""
    assert heard == {"v2sync": expected, "v2ray": expected}


def _banner_or_close(sock: socket.socket) -> bytes:
    """What arrives until the whole banner has, or the peer closes (the socket's timeout
    bounds each read)."""
    data = b""
    while len(data) < len(Banner.BANNER):
        chunk = sock.recv(len(Banner.BANNER) - len(data))
        if not chunk:
            break
        data += chunk
    return data


# -- scripted bad peers against an in-process instance ------------------------------------

def _quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass


def wrong_user(port: int, protocol: str) -> None:
    with connect(port) as sock:
        _quietly(sock, _bad_header(protocol) + REQUEST)
        sock.shutdown(socket.SHUT_WR)  # the trojan inbound's fallback is an echo: EOF ends it
        answer = read_until_closed(sock, CLOSE_LIMIT + 5)
        assert len(answer) == (len(_bad_header(protocol) + REQUEST) if protocol == "trojan" else 0)


def truncated(port: int, protocol: str) -> None:
    good = (b"\x00" + parse_uuid(USER_ID) + b"\x00\x01\x00" if protocol == "vless"
            else password_key(PASSWORD) + b"\r\n\x01\x03")
    with connect(port) as sock:
        _quietly(sock, good)  # a known user, then the header stops
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock, CLOSE_LIMIT + 5) == b""


def garbage(port: int, protocol: str) -> None:
    good = (b"\x00" + parse_uuid(USER_ID) + b"\x00\x09\xff" if protocol == "vless"
            else password_key(PASSWORD) + b"\r\n\x01\x09\xff")
    with connect(port) as sock:
        _quietly(sock, good + bytes(range(200)))
        assert read_until_closed(sock, CLOSE_LIMIT + 5) == b""


def connect_and_close(port: int, protocol: str) -> None:
    connect(port).close()


PEERS = [wrong_user, truncated, garbage, connect_and_close]


@pytest.fixture
def instance() -> Iterator:
    echo = TcpEchoServer(xor=XOR_C)
    echo.start()
    inbounds = [
        {"tag": "vless-in", "protocol": "vless", "listen": "127.0.0.1", "port": 0,
         "settings": {"decryption": "none", "clients": [{"id": USER_ID}]}},
        {"tag": "trojan-in", "protocol": "trojan", "listen": "127.0.0.1", "port": 0,
         "settings": {"clients": [{"password": PASSWORD}],
                      "fallbacks": [{"dest": echo.port}]}},
    ]
    try:
        with running_instance(make_config(inbounds, handshake=2)) as inst:
            yield inst
    finally:
        echo.close()


def _run(index: int, ports) -> None:
    peer = PEERS[index % len(PEERS)]
    protocol = "vless" if (index // len(PEERS)) % 2 == 0 else "trojan"
    peer(ports[protocol], protocol)


def test_thousand_bad_connections_leave_no_threads_or_fds(instance) -> None:
    ports = {"vless": port_of(instance, "vless-in"), "trojan": port_of(instance, "trojan-in")}
    for i in range(len(PEERS) * 2):  # warm up, and each peer's own assertions once
        _run(i, ports)
    _idle_fallback(ports["trojan"])  # starts the Instance's one read waiter, kept for good
    wait_idle(instance)
    before = snapshot()
    with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="bad-peer") as pool:
        list(pool.map(lambda i: _run(i, ports), range(BAD_CONNECTIONS)))
    wait_idle(instance, BASELINE_TIMEOUT)
    wait_for_snapshot(before, BASELINE_TIMEOUT)


def _idle_fallback(port: int) -> None:
    """A fallback connection idle long enough for its readers to park (relayed as a
    dispatched connection is, each reader parks with the Instance's read waiter)."""
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not Trojan: to the echo fallback
        assert sock.recv(64)
        time.sleep(PARK_AFTER * 4)


class AbstractRecorder:
    """Records one connection on an abstract unix socket (Linux), then answers."""

    def __init__(self, address: bytes):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(4)
        self.sock.settimeout(IO_TIMEOUT)

    def record_one(self) -> bytes:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(IO_TIMEOUT)
            return record_request(conn)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("padded", [False, True], ids=["@name", "@@name"])
def test_abstract_unix_fallback_as_in_4_34(padded: bool) -> None:
    """``"@name"`` is the abstract socket ``\\0name``; ``"@@name"`` the same name padded with
    NULs to all 108 bytes of sun_path (haproxy's habit). Both implementations must reach
    the one the test bound."""
    name = f"v2sync-fallback-{os.getpid()}-{int(padded)}"
    address = b"\0" + name.encode()
    if padded:
        address += b"\0" * (108 - len(address))
    recorder = AbstractRecorder(address)
    try:
        for implementation in ("v2sync", "v2ray"):
            port = free_port()
            dest = ("@@" if padded else "@") + name
            inbound = server_inbound("trojan", port, {}, fallbacks=[{"dest": dest}])
            with make_process(implementation, server_config(inbound)):
                with connect(port, timeout=IO_TIMEOUT) as sock:
                    sock.sendall(_bad_header("trojan") + REQUEST)
                    assert recorder.record_one() == _bad_header("trojan") + REQUEST
                    assert read_until_closed(sock, IO_TIMEOUT) == b"recorded", implementation
    finally:
        recorder.close()
