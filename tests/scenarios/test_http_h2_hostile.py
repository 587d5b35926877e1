"""Hostile HTTP/2 clients of v2sync's HTTP inbound over TLS (beyond 4.34, whose HTTP inbound
speaks HTTP/1 only; found by a review):

- a client that stops reading while its tunnel's target keeps sending: at connIdle the
  tunnel's reset ran in the timer wheel's thread and waited for the writer stuck on that
  client, so no timer of the process fired any more;
- "rapid reset": streams opened and reset at once cost a thread and a dial each;
- a PING flood from a client that does not read: the answers queued without bound.

The clients are the ``h2`` package and hand-made frames (``hyperframe``, h2's own).
"""
from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Dict, Iterator, List, Tuple

import h2.connection
import h2.errors
import h2.events
import h2.settings
import hyperframe.frame
import pytest

from scenarios.helpers_scenarios import how_it_ends
from support.certs import SERVER_NAME, Pki
from support.peers import BulkSource, TcpEchoServer, free_port
from support.procs import V2SyncProcess

IO_TIMEOUT = 10.0
CONN_IDLE = 2
SMALL_BUFFER = 4096
MAX_READS = 10_000
STREAM_BYTES = 1 << 30  # more than any test takes


def config(http_port: int, socks_port: int, pki: Pki, conn_idle: int = CONN_IDLE
           ) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "policy": {"levels": {"0": {"connIdle": conn_idle, "handshake": 2,
                                        "uplinkOnly": 1, "downlinkOnly": 1}}},
            "inbounds": [
                {"tag": "http-in", "protocol": "http", "listen": "127.0.0.1",
                 "port": http_port, "settings": {},
                 "streamSettings": {"security": "tls", "tlsSettings": pki.server_tls()}},
                {"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1",
                 "port": socks_port, "settings": {"auth": "noauth"}}],
            "outbounds": [{"protocol": "freedom"}]}


@pytest.fixture
def server(pki: Pki) -> Iterator[Tuple[V2SyncProcess, int, int]]:
    http_port, socks_port = free_port(), free_port()
    with V2SyncProcess(config(http_port, socks_port, pki)) as process:
        yield process, http_port, socks_port


def h2_client(port: int, pki: Pki, receive_buffer: int = 0
              ) -> Tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    raw = socket.socket()
    if receive_buffer:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    raw.settimeout(IO_TIMEOUT)
    raw.connect(("127.0.0.1", port))
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.set_alpn_protocols(["h2"])
    tls = context.wrap_socket(raw, server_hostname=SERVER_NAME)
    assert tls.selected_alpn_protocol() == "h2"
    client = h2.connection.H2Connection()
    client.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    client.initiate_connection()
    client.increment_flow_control_window(2**31 - 1 - 65535)
    tls.sendall(client.data_to_send())
    return tls, client


def connect_headers(client: h2.connection.H2Connection, stream: int,
                    target: Tuple[str, int]) -> None:
    client.send_headers(stream, [(":method", "CONNECT"), (":authority", "%s:%d" % target)])


def source(seconds: float) -> BulkSource:
    """A target that streams to its client for as long as a test lasts: its send blocks
    once the client stops reading, for up to ``seconds``, until the test ends it."""
    return BulkSource(STREAM_BYTES, timeout=seconds)


def test_a_client_that_stops_reading_leaves_other_timers_firing(
        server: Tuple[V2SyncProcess, int, int], pki: Pki, tcp_echo: TcpEchoServer) -> None:
    _, http_port, socks_port = server
    with source(CONN_IDLE * 4) as streaming:
        tls, client = h2_client(http_port, pki, receive_buffer=SMALL_BUFFER)
        with tls:
            connect_headers(client, 1, streaming.address)
            tls.sendall(client.data_to_send())  # and never read again
            time.sleep(CONN_IDLE + 1.5)  # the stalled tunnel's timer has fired by now
            with socket.create_connection(("127.0.0.1", socks_port), IO_TIMEOUT) as idle:
                idle.sendall(b"\x05\x01\x00")
                assert idle.recv(2) == b"\x05\x00"
                host, port = tcp_echo.address
                idle.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host)
                             + port.to_bytes(2, "big"))
                assert idle.recv(10)[:2] == b"\x05\x00"
                assert how_it_ends(idle, CONN_IDLE + 3) in ("fin", "reset")  # connIdle fired


def read_events(tls: ssl.SSLSocket, client: h2.connection.H2Connection,
                until: float) -> List[Any]:
    """Events until the connection ends or ``until`` (monotonic)."""
    events: List[Any] = []
    for _ in range(MAX_READS):
        left = until - time.monotonic()
        if left <= 0:
            break
        tls.settimeout(left)
        try:
            data = tls.recv(65536)
        except (socket.timeout, ssl.SSLError, ConnectionResetError):
            break
        if not data:
            break
        events += client.receive_data(data)
        if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
            break
    return events


def test_rapid_reset_ends_the_connection(server: Tuple[V2SyncProcess, int, int], pki: Pki,
                                         tcp_echo: TcpEchoServer) -> None:
    process, http_port, _ = server
    streams = 300
    before = tcp_echo.accepted
    tls, client = h2_client(http_port, pki)
    with tls:
        for stream in range(1, 2 * streams, 2):
            connect_headers(client, stream, tcp_echo.address)
            client.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        tls.sendall(client.data_to_send())
        events = read_events(tls, client, time.monotonic() + IO_TIMEOUT)
    ended = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended and ended[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    time.sleep(0.5)
    assert tcp_echo.accepted - before <= 110  # the streams in hand, not one per stream
    assert "[Error]" not in process.log_text()


FLOOD_SECONDS = 30.0  # the acks first fill the socket buffers on the way (MBs on loopback)


def test_a_ping_flood_from_a_client_that_does_not_read_ends_the_connection(pki: Pki) -> None:
    """A tunnel's data holds the writer on the full socket while the reader reads the
    pings on: with a long connIdle, so that only the flood can end the connection."""
    http_port = free_port()
    pings = hyperframe.frame.PingFrame(0, opaque_data=b"12345678").serialize() * 4096
    with V2SyncProcess(config(http_port, free_port(), pki, conn_idle=120)), \
            source(FLOOD_SECONDS) as streaming:
        tls, client = h2_client(http_port, pki, receive_buffer=SMALL_BUFFER)
        connect_headers(client, 1, streaming.address)
        tls.sendall(client.data_to_send())
        time.sleep(1)  # the writer is stuck on this client's full window by now
        assert _flood(tls, pings)


def _flood(tls: ssl.SSLSocket, pings: bytes) -> bool:
    deadline = time.monotonic() + FLOOD_SECONDS
    with tls:
        while time.monotonic() < deadline:  # about 70 KiB a send, never a read
            try:
                tls.sendall(pings)
            except socket.timeout:
                continue  # the server reads no more for now: not an end
            except (OSError, ssl.SSLError):
                return True
    return False


def _frame_head(length: int, kind: int, flags: int, stream: int) -> bytes:
    return length.to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")


@pytest.mark.parametrize("declared, sent", [(16_777_215, 65_536), (16_384, 16_384)],
                         ids=["16-MiB-frame", "header-block-over-64-KiB"])
def test_a_frame_or_header_block_past_the_limits_is_refused_at_once(
        server: Tuple[V2SyncProcess, int, int], pki: Pki, declared: int, sent: int) -> None:
    """h2 buffered a declared 16 MiB frame whole before checking its length (~17 MiB held
    until connIdle), and hpack decoded a 1 MiB header block before h2 checked its size
    (~0.3 s of CPU each); both are now refused as their frame headers arrive, with a
    GOAWAY (found by a review). The second case sends 5 full frames of one block."""
    _, http_port, _ = server
    tls, client = h2_client(http_port, pki)
    with tls:
        if declared > sent:
            tls.sendall(_frame_head(declared, 0x1, 0x4, 1) + b"\0" * sent)
        else:
            tls.sendall(_frame_head(declared, 0x1, 0, 1) + b"\0" * declared
                        + (_frame_head(declared, 0x9, 0, 1) + b"\0" * declared) * 4)
        events = read_events(tls, client, time.monotonic() + 1.5)
    ended = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended and ended[0].error_code == h2.errors.ErrorCodes.FRAME_SIZE_ERROR
