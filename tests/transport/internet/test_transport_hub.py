"""The transport layer without proxies: sockopt on real sockets, domain sockets, the registry,
and each transport's server handshake answering probes the way 4.34 does."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from v2sync import distro  # noqa: F401  (registers every transport)
from v2sync.common.errors import ConfigError, HandshakeTimeout, RemoteProtocolError, TransportError
from v2sync.common.net import LOCALHOST, Address, Destination, Network
from v2sync.common.registry import TRANSPORTS
from v2sync.transport.internet.config import (DsSettings, SockoptSettings,
                                              build_stream_settings)
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.hub import StreamClient, StreamServer
from v2sync.transport.internet.sockopt import TFO_QUEUE, apply_outbound
from v2sync.transport.internet.tcp import bind_tcp, dial_tcp
from v2sync.transport.internet.udp import dial_udp, open_udp

TIMEOUT = 10.0


def test_registry_names_the_supported_networks() -> None:
    assert TRANSPORTS.names() == ["domainsocket", "tcp", "websocket"]
    with pytest.raises(ConfigError, match="'mkcp' is not supported by v2sync"):
        TRANSPORTS.get("mkcp")


def test_listener_gets_mark_and_fast_open() -> None:
    opt = SockoptSettings(mark=42, tcp_fast_open=True)
    with bind_tcp(LOCALHOST, 0, opt) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 42
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN) == TFO_QUEUE


def test_dialed_socket_gets_mark_and_fast_open_connect() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        dest = Destination.tcp("127.0.0.1", listener.getsockname()[1])
        conn = dial_tcp(dest, TIMEOUT, opt=SockoptSettings(mark=7, tcp_fast_open=True))
        try:
            assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 7
            assert conn.sock.getsockopt(socket.IPPROTO_TCP, 30) == 1  # TCP_FASTOPEN_CONNECT
        finally:
            conn.close()


def test_udp_sockets_get_the_outbounds_mark() -> None:
    """freedom's unconnected socket and the connected ones of the Shadowsocks, SOCKS and
    dns outbounds, as 4.34's dialer marks every socket it makes."""
    dest = Destination(Address.parse("127.0.0.1"), 9, Network.UDP)
    for make in (open_udp, dial_udp):
        with make(dest, None, SockoptSettings(mark=9)) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 9


def test_a_failing_option_is_a_clear_transport_error() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        with pytest.raises(TransportError, match="failed to set TCP_FASTOPEN_CONNECT=1"):
            apply_outbound(sock, SockoptSettings(tcp_fast_open=True))


def _echo_once(server: StreamServer, sock: socket.socket, errors: list) -> None:
    try:
        raw, _ = sock.accept()
        conn = server.accept(Connection(raw, Destination.tcp("127.0.0.1", 1)))
        try:
            conn.write(conn.read(1024))
        finally:
            conn.close()
    except Exception as e:  # surfaced by the test
        errors.append(e)


def _round_trip(server_settings, client_settings, address=LOCALHOST) -> bytes:
    server = StreamServer(server_settings, TIMEOUT)
    sock, cleanup = server.listen(address, 0)
    errors: list = []
    thread = threading.Thread(target=_echo_once, args=(server, sock, errors))
    thread.start()
    try:
        port = 0 if sock.family == socket.AF_UNIX else sock.getsockname()[1]
        dest = Destination.tcp("127.0.0.1", port)
        conn = StreamClient(client_settings).dial(dest, dest, TIMEOUT)
        try:
            conn.write(b"hello over the transport")
            return conn.read(1024)
        finally:
            conn.close()
    finally:
        thread.join(TIMEOUT)
        sock.close()
        cleanup()
        assert not errors, errors


def test_domain_socket_file_lock_and_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "v.sock"
    settings = build_stream_settings("domainsocket", "none", {"dsSettings": {"path": str(path)}},
                                     server=True)
    server = StreamServer(settings, TIMEOUT)
    sock, cleanup = server.listen(LOCALHOST, 1234)
    try:
        assert path.exists() and Path(str(path) + ".lock").exists()
        with pytest.raises(TransportError, match="another process holds it"):
            server.listen(LOCALHOST, 1234)  # the lock guards the path
    finally:
        sock.close()
        cleanup()
    assert not path.exists() and not Path(str(path) + ".lock").exists()


def test_domain_socket_round_trip_file_and_abstract(tmp_path: Path) -> None:
    for ds in ({"path": str(tmp_path / "a.sock")},
               {"path": f"@v2sync-test-{os.getpid()}", "abstract": True},
               {"path": f"v2sync-pad-{os.getpid()}", "abstract": True, "padding": True}):
        settings = build_stream_settings("domainsocket", "none", {"dsSettings": ds}, server=True)
        assert _round_trip(settings, settings) == b"hello over the transport"


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(str(path))  # bound, never listening: what a crashed server leaves behind
    settings = build_stream_settings("domainsocket", "none", {"dsSettings": {"path": str(path)}},
                                     server=True)
    assert _round_trip(settings, settings) == b"hello over the transport"


def test_abstract_address_padding() -> None:
    assert DsSettings("@x", abstract=True).address() == "\0x"
    padded = DsSettings("x", abstract=True, padding=True).address()
    assert len(padded) == 108 and padded.startswith("\0x\0")
    # A leading @ alone makes it abstract (Go's syscall); padding needs the flag.
    assert DsSettings("@x", padding=True).address() == "\0x"
    assert DsSettings("x@").address() == "x@"


@pytest.mark.parametrize("network, raw", [
    ("tcp", {}),
    ("tcp", {"tcpSettings": {"header": {"type": "http"}}}),
    ("websocket", {"wsSettings": {"path": "/p"}}),
])
def test_tcp_and_ws_round_trips_with_and_without_tls(pki, network, raw) -> None:
    plain = build_stream_settings(network, "none", raw, server=True)
    assert _round_trip(plain, plain) == b"hello over the transport"
    server = build_stream_settings(network, "tls", {**raw, "tlsSettings": pki.server_tls()}, True)
    client = build_stream_settings(network, "tls", {**raw, "tlsSettings": pki.client_tls()}, False)
    assert _round_trip(server, client) == b"hello over the transport"


def _probe(server_settings, request: bytes, timeout: float = TIMEOUT,
           half_close: bool = False) -> bytes:
    """Send ``request`` raw to a StreamServer; return what it answers before closing.
    ``half_close``: end the client's side after it, so a server keeping the connection
    alive for another request (net/http's 4 s) closes at once."""
    server = StreamServer(server_settings, timeout)
    sock, cleanup = server.listen(LOCALHOST, 0)
    outcome: list = []

    def serve() -> None:
        raw, _ = sock.accept()
        conn = Connection(raw)
        try:
            server.accept(conn)
        except (RemoteProtocolError, HandshakeTimeout, TransportError) as e:
            outcome.append(e)
        finally:
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(sock.getsockname(), timeout=TIMEOUT) as client:
            client.sendall(request)
            if half_close:
                client.shutdown(socket.SHUT_WR)
            answer = b""
            while True:
                data = client.recv(4096)
                if not data:
                    break
                answer += data
    finally:
        thread.join(TIMEOUT)
        sock.close()
        cleanup()
    assert outcome, "the server accepted a bad handshake"
    return answer


def test_ws_wrong_path_gets_404_and_bad_upgrade_400() -> None:
    settings = build_stream_settings("websocket", "none", {"wsSettings": {"path": "/ok"}}, True)
    request = (b"GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert _probe(settings, request, half_close=True).startswith(b"HTTP/1.1 404 ")
    plain_get = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _probe(settings, plain_get, half_close=True).startswith(b"HTTP/1.1 400 ")


def test_http_header_wrong_path_gets_404() -> None:
    raw = {"tcpSettings": {"header": {"type": "http", "request": {"path": ["/a"]}}}}
    settings = build_stream_settings("tcp", "none", raw, True)
    answer = _probe(settings, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n") and b"\r\nDate: " in answer


def test_stalled_tls_handshake_is_cut_at_the_deadline(pki) -> None:
    settings = build_stream_settings("tcp", "tls", {"tlsSettings": pki.server_tls()}, True)
    started = time.monotonic()
    assert _probe(settings, b"\x16\x03\x01", timeout=1.0) == b""
    assert time.monotonic() - started < 5.0


def test_tls_server_without_a_key_is_a_config_error(pki) -> None:
    with pytest.raises(ConfigError, match="needs a certificate and its key"):
        build_stream_settings("tcp", "tls", {"tlsSettings": {"certificates": [
            {"certificateFile": str(pki.cert_file)}]}}, server=True)


@pytest.mark.parametrize("tls, message", [
    ({"certificates": [{"certificateFile": "/nonexistent.pem", "keyFile": "/k.pem"}]},
     "failed to read '/nonexistent.pem'"),
    ({"certificates": [{"certificateFile": "/tmp/c\0.pem", "keyFile": "/k.pem"}]},
     "failed to read .*: embedded null"),  # was an internal error
    ({"certificates": [{"certificate": ["not a pem"], "key": ["nope"]}]}, "invalid PEM certificate"),
    ({"certificates": [{"certificate": ["x"], "usage": "issue"}]},
     "certificate usage 'issue' is not supported by v2sync"),
])
def test_bad_certificates_are_config_errors(tls, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_stream_settings("tcp", "tls", {"tlsSettings": tls}, server=False)
    assert info.value.path.startswith("tlsSettings.certificates[0]")


def test_bad_ws_header_and_empty_ds_path_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="Sec-WebSocket-Key"):
        build_stream_settings("websocket", "none",
                              {"wsSettings": {"headers": {"Sec-WebSocket-Key": "x"}}}, False)
    with pytest.raises(ConfigError, match="empty domain socket path"):
        build_stream_settings("domainsocket", "none", {"dsSettings": {}}, False)


@pytest.mark.parametrize("path", ["/tmp/s\0ock", "@s\0ock"])  # each locks <path>.lock
def test_a_nul_byte_in_a_socket_file_path_is_a_config_error(path: str) -> None:
    """4.34 fails at start to create the lock file; v2sync's start raised ValueError (a
    traceback, and a reload to such a config ended the process: found by a review)."""
    with pytest.raises(ConfigError, match="a NUL byte in a domain socket path"):
        build_stream_settings("domainsocket", "none", {"dsSettings": {"path": path}}, True)
    abstract = {"dsSettings": {"path": path, "abstract": True}}  # any bytes name an abstract one
    assert build_stream_settings("domainsocket", "none", abstract, True).ds.path == path


def test_send_through_binds_the_source_address_for_every_transport(pki) -> None:
    """sendThrough belongs to the outbound handler, so VMess dials from it as freedom does."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        dest = Destination.tcp("127.0.0.1", listener.getsockname()[1])
        client = StreamClient(None, source=Address.parse("127.0.0.2"))
        conn = client.dial(dest, dest, TIMEOUT)
        try:
            accepted, peer = listener.accept()
            accepted.close()
            assert peer[0] == "127.0.0.2"
        finally:
            conn.close()
