"""Client handshakes that finish on first use (TLS, WebSocket), over real loopback sockets.

A dialer sends its opening message and returns; the first read or write, from either
thread, finishes the handshake. These tests pin down what that must never change: nothing
is sent before the peer allows it, a failure reaches every later user, and the socket's own
timeout survives the handshake's deadlines.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable, List

import pytest

from v2sync import distro  # noqa: F401  (registers every transport)
from v2sync.common.errors import (HandshakeTimeout, RemoteProtocolError, ServerHandshakeError,
                                  TransportError)
from v2sync.common.net import Destination
from v2sync.transport.internet.config import build_stream_settings, build_tls
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.internet import tls as tls_module
from v2sync.transport.internet.tls import ClientTls, ServerTls, TlsConnection
from v2sync.transport.internet.websocket.handshake import accept_token

TIMEOUT = 10.0
TARGET = Destination.tcp("v2sync.test", 443)
TLS_HANDSHAKE_RECORD = 0x16


def _pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    server.settimeout(TIMEOUT)
    return Connection(client), server


def _in_thread(target: Callable[[], None], errors: List[BaseException]) -> threading.Thread:
    def guard() -> None:
        try:
            target()
        except BaseException as e:  # surfaced by the test
            errors.append(e)
    thread = threading.Thread(target=guard)
    thread.start()
    return thread


def _tls_server(server_tls: ServerTls, raw_server: socket.socket,
                use: Callable[[Connection], None]) -> Callable[[], None]:
    """The server end, for a thread: handshake, ``use`` the connection, close it."""
    def serve() -> None:
        served = server_tls.wrap(Connection(raw_server), time.monotonic() + TIMEOUT)
        try:
            use(served)
        finally:
            served.close()
    return serve


def test_tls_dial_returns_once_the_client_hello_is_sent(pki) -> None:
    """Nobody answers, yet ``wrap`` returns at once; the first use then meets the deadline."""
    client_tls = ClientTls(build_tls(pki.client_tls()))
    raw_client, raw_server = _pair()
    try:
        started = time.monotonic()
        client = client_tls.wrap(raw_client, TARGET, time.monotonic() + 0.3)
        assert time.monotonic() - started < 0.25
        assert raw_server.recv(5)[0] == TLS_HANDSHAKE_RECORD  # the ClientHello went out
        client.settimeout(None)
        with pytest.raises(ServerHandshakeError, match="timed out") as failed:
            client.write(b"never sent")
        assert isinstance(failed.value.__cause__, HandshakeTimeout)
        assert client.sock.gettimeout() is None  # the handshake's deadline did not stick
        with pytest.raises(TransportError, match="handshake failed earlier"):
            client.read(10)
    finally:
        raw_client.close()
        raw_server.close()


def test_tls_finished_travels_with_the_first_write(pki) -> None:
    """The server cannot finish its handshake before the client's first write: the client's
    Finished leaves with that write, and the data is there as soon as the server is done."""
    server_tls = ServerTls(build_tls(pki.server_tls()))
    client_tls = ClientTls(build_tls(pki.client_tls()))
    raw_client, raw_server = _pair()
    errors: List[BaseException] = []
    seen = {}

    def read_once_done(served: Connection) -> None:
        seen["done"] = time.monotonic()
        seen["data"] = served.read(100)

    thread = _in_thread(_tls_server(server_tls, raw_server, read_once_done), errors)
    try:
        client = client_tls.wrap(raw_client, TARGET, time.monotonic() + TIMEOUT)
        time.sleep(0.2)  # an eager client would have finished here, without data
        wrote = time.monotonic()
        client.write(b"first data")
        thread.join(TIMEOUT)
        assert not errors, errors
        assert seen["done"] >= wrote
        assert seen["data"] == b"first data"
        assert client.alpn == "h2"
    finally:
        thread.join(TIMEOUT)
        raw_client.close()


def test_tls_verification_failure_reaches_every_later_use(pki) -> None:
    server_tls = ServerTls(build_tls(pki.server_tls()))
    client_tls = ClientTls(build_tls(pki.client_tls("wrong.test")))
    raw_client, raw_server = _pair()
    errors: List[BaseException] = []
    thread = _in_thread(lambda: server_tls.wrap(Connection(raw_server),
                                                time.monotonic() + TIMEOUT), errors)
    try:
        client = client_tls.wrap(raw_client, TARGET, time.monotonic() + TIMEOUT)
        with pytest.raises(TransportError, match="Hostname mismatch|doesn't match"):
            client.write(b"secret")
        with pytest.raises(TransportError, match="handshake failed earlier.*mismatch|match"):
            client.read(10)
        thread.join(TIMEOUT)
        assert errors and isinstance(errors[0], TransportError)  # the server got the alert
    finally:
        thread.join(TIMEOUT)
        raw_client.close()
        raw_server.close()


def test_tls_reader_and_writer_may_both_come_first(pki) -> None:
    """Both threads of a relay start on a fresh connection; one finishes the handshake, the
    other waits for it, and bytes flow both ways."""
    server_tls = ServerTls(build_tls(pki.server_tls()))
    client_tls = ClientTls(build_tls(pki.client_tls()))
    raw_client, raw_server = _pair()
    errors: List[BaseException] = []

    server_thread = _in_thread(
        _tls_server(server_tls, raw_server, lambda served: served.write(served.read(100))),
        errors)
    client = client_tls.wrap(raw_client, TARGET, time.monotonic() + TIMEOUT)
    client.settimeout(None)
    got: List[bytes] = []
    try:
        threads = [_in_thread(lambda: got.append(client.read(100)), errors),
                   _in_thread(lambda: client.write(b"ping"), errors)]
        for thread in threads + [server_thread]:
            thread.join(TIMEOUT)
        assert not errors, errors
        assert got == [b"ping"]
    finally:
        server_thread.join(TIMEOUT)
        client.close()


def _exchange(server_tls: ServerTls, client_tls: ClientTls,
              target: Destination = TARGET) -> TlsConnection:
    """One dial: the client writes, the server reads it back; returns the client end."""
    raw_client, raw_server = _pair()
    errors: List[BaseException] = []
    got: List[bytes] = []

    thread = _in_thread(
        _tls_server(server_tls, raw_server, lambda served: got.append(served.read(100))),
        errors)
    try:
        client = client_tls.wrap(raw_client, target, time.monotonic() + TIMEOUT)
        client.write(b"hello")
        thread.join(TIMEOUT)
        assert not errors, errors
        assert got == [b"hello"]
        return client
    except BaseException:
        raw_client.close()
        raise
    finally:
        thread.join(TIMEOUT)


def test_next_client_hello_is_made_after_the_first_write_and_used_once(pki) -> None:
    """After a handshake and its first write, the client makes the next dial's ClientHello
    (a fresh key pair) while it waits; the next dial to that name sends it, verified as
    usual, and it is never used twice."""
    server_tls = ServerTls(build_tls(pki.server_tls()))
    client_tls = ClientTls(build_tls(pki.client_tls()))
    assert client_tls._spare is None
    first = _exchange(server_tls, client_tls)
    spare = client_tls._spare
    assert spare is not None and spare.server_name == "v2sync.test"
    second = _exchange(server_tls, client_tls)
    assert second._obj is spare.obj  # the made-ahead hello carried this handshake
    assert client_tls._spare is not None and client_tls._spare is not spare
    for conn in (first, second):
        conn.close()


def test_spare_hello_is_not_used_for_another_name_or_when_stale(pki, monkeypatch) -> None:
    server_tls = ServerTls(build_tls(pki.server_tls()))
    client_tls = ClientTls(build_tls({"allowInsecure": True}))  # SNI: the dialed name
    first = _exchange(server_tls, client_tls)
    spare = client_tls._spare
    other = _exchange(server_tls, client_tls, Destination.tcp("other.test", 443))
    assert other._obj is not spare.obj  # SNI differs: a fresh hello
    monkeypatch.setattr(tls_module, "SPARE_HELLO_TTL", 0.0)
    stale = client_tls._spare
    third = _exchange(server_tls, client_tls, Destination.tcp("other.test", 443))
    assert third._obj is not stale.obj  # too old: dropped
    for conn in (first, other, third):
        conn.close()


def test_a_wrong_name_fails_with_a_spare_hello_too(pki) -> None:
    """The made-ahead hello names the server it was made for; verification still runs."""
    server_tls = ServerTls(build_tls(pki.server_tls()))
    client_tls = ClientTls(build_tls(pki.client_tls("wrong.test", allowInsecure=False)))
    client_tls._make_spare("wrong.test")
    raw_client, raw_server = _pair()
    errors: List[BaseException] = []
    thread = _in_thread(lambda: server_tls.wrap(Connection(raw_server),
                                                time.monotonic() + TIMEOUT), errors)
    try:
        spare = client_tls._spare
        client = client_tls.wrap(raw_client, TARGET, time.monotonic() + TIMEOUT)
        assert client._obj is spare.obj
        with pytest.raises(TransportError, match="Hostname mismatch|doesn't match"):
            client.write(b"secret")
    finally:
        thread.join(TIMEOUT)
        raw_client.close()
        raw_server.close()


def _ws_client(path: str = "/ws") -> StreamClient:
    return StreamClient(build_stream_settings("websocket", "none", {"wsSettings": {"path": path}},
                                              server=False))


def _read_request(sock: socket.socket) -> bytes:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = sock.recv(4096)
        assert chunk, "client closed before its request"
        request += chunk
    return request


def _upgrade_answer(request: bytes) -> bytes:
    key = [line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
           if line.lower().startswith(b"sec-websocket-key:")][0]
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_token(key.decode()).encode() + b"\r\n\r\n")


def test_ws_dial_sends_nothing_and_first_write_waits_for_the_101() -> None:
    """The dial returns with nothing sent; the first write sends the upgrade request, and
    its frame follows only after the server's 101 (RFC 6455 §4.1)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        dest = Destination.tcp("127.0.0.1", listener.getsockname()[1])
        started = time.monotonic()
        client = _ws_client().dial(dest, dest, TIMEOUT)
        assert time.monotonic() - started < 1.0
        server, _ = listener.accept()
        errors: List[BaseException] = []
        try:
            server.settimeout(0.2)
            with pytest.raises(socket.timeout):
                server.recv(100)  # no request yet: nobody has used the connection
            writer = _in_thread(lambda: client.write(b"after the upgrade"), errors)
            server.settimeout(TIMEOUT)
            request = _read_request(server)
            assert request.startswith(b"GET /ws HTTP/1.1\r\n") and request.endswith(b"\r\n\r\n")
            time.sleep(0.2)
            server.settimeout(0)
            with pytest.raises(BlockingIOError):
                server.recv(100)  # the write is waiting for our answer
            server.settimeout(TIMEOUT)
            server.sendall(_upgrade_answer(request))
            writer.join(TIMEOUT)
            assert not errors, errors
            frame = server.recv(100)
            assert frame[0] == 0x82 and frame[1] == 0x80 | len(b"after the upgrade")
        finally:
            client.close()
            server.close()


def test_ws_refusal_surfaces_on_first_use_and_close_sends_no_frame() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        dest = Destination.tcp("127.0.0.1", listener.getsockname()[1])
        client = _ws_client("/wrong").dial(dest, dest, TIMEOUT)
        server, _ = listener.accept()
        server.settimeout(TIMEOUT)
        errors: List[BaseException] = []

        def refuse() -> None:
            _read_request(server)
            server.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

        thread = _in_thread(refuse, errors)
        try:
            with pytest.raises(ServerHandshakeError, match="404") as failed:
                client.write(b"data")
            assert isinstance(failed.value.__cause__, RemoteProtocolError)
            with pytest.raises(TransportError, match="handshake failed earlier"):
                client.read(10)
            thread.join(TIMEOUT)
            assert not errors, errors
            client.close()
            assert server.recv(100) == b""  # no data frame, no close frame: just the FIN
        finally:
            thread.join(TIMEOUT)
            client.close()
            server.close()
