"""freedom and blackhole outbounds end to end, through real SOCKS and HTTP inbounds.

freedom: ``redirect`` wins over the port the client asked for, ``domainStrategy: UseIPv4``
resolves "localhost" to 127.0.0.1, and an 8 MiB download arrives byte-exact. blackhole: with
no response the client sees a close and nothing else; with ``http`` it gets 4.34's exact 403
(v2ray ``proxy/freedom/freedom.go``, ``proxy/blackhole/config.go``).
"""
from __future__ import annotations

import socket
import threading
import time

from scenarios.helpers_scenarios import (BLACKHOLE_403, IO_TIMEOUT, blackhole, curl_ok,
                                         curl_status, freedom, get_request, http_inbound, http_request,
                                         make_config, port_of, read_until_closed, recv_exact,
                                         running_instance, socks5_tunnel, socks_inbound)
from v2sync.core import Instance
from v2sync.infra.conf.builder import config_from_dict
from support.peers import (XOR_C, BulkSource, HttpOrigin, TcpEchoServer, free_port, pattern_bytes,
                           xor_bytes)

MIB = 1024 * 1024
BULK_BYTES = 8 * MIB
UPLOAD_BYTES = 4 * MIB
BLACKHOLE_CLOSE_SECONDS = 3.0
BLACKHOLE_REPEATS = 10
HOLD_REACHED = 0.05  # the client's EOF has reached the blackhole: most of its second is left
CURL_REPEATS = 8


def _recv_or_empty(sock, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only if the peer closes first (so a list compare shows it)."""
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _echo_roundtrip(sock, payload: bytes) -> bytes:
    sock.sendall(payload)
    return recv_exact(sock, len(payload))


def test_freedom_redirect_overrides_the_requested_port() -> None:
    with TcpEchoServer(xor=XOR_C) as echo:
        config = make_config([socks_inbound()], [freedom(redirect=f"127.0.0.1:{echo.port}")])
        with running_instance(config) as instance:
            nowhere = free_port()  # nothing listens here: only the redirect can answer
            with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", nowhere) as sock:
                assert _echo_roundtrip(sock, b"redirected") == xor_bytes(b"redirected")
        assert echo.accepted == 1


def test_freedom_redirect_with_only_a_port_keeps_the_host() -> None:
    with TcpEchoServer(xor=XOR_C) as echo:
        config = make_config([socks_inbound()], [freedom(redirect=f":{echo.port}")])
        with running_instance(config) as instance:
            with socks5_tunnel(port_of(instance, "socks-in"), "localhost", free_port()) as sock:
                assert _echo_roundtrip(sock, b"port only") == xor_bytes(b"port only")


def test_freedom_use_ipv4_resolves_localhost() -> None:
    with TcpEchoServer(xor=XOR_C) as echo:  # bound to 127.0.0.1 only
        config = make_config([socks_inbound()], [freedom(domainStrategy="UseIPv4")])
        with running_instance(config) as instance:
            with socks5_tunnel(port_of(instance, "socks-in"), "localhost", echo.port) as sock:
                assert _echo_roundtrip(sock, b"v4 please") == xor_bytes(b"v4 please")


def test_freedom_bulk_download_is_byte_exact() -> None:
    with BulkSource(BULK_BYTES) as source:
        with running_instance(make_config([socks_inbound()])) as instance:
            with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", source.port) as sock:
                data = read_until_closed(sock, timeout=30.0, limit=BULK_BYTES + MIB)
    assert len(data) == BULK_BYTES
    assert data == pattern_bytes(BULK_BYTES)


def test_freedom_bulk_download_through_http_proxy(http_origin: HttpOrigin) -> None:
    with running_instance(make_config([http_inbound()])) as instance:
        url = f"{http_origin.url}/bytes/{BULK_BYTES}"
        proxy = f"http://127.0.0.1:{port_of(instance, 'http-in')}"
        assert curl_ok("-x", proxy, url) == pattern_bytes(BULK_BYTES)


def test_blackhole_none_closes_without_data(tcp_echo: TcpEchoServer) -> None:
    config = make_config([socks_inbound()], [blackhole()])
    with running_instance(config) as instance:
        with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", tcp_echo.port) as sock:
            started = time.monotonic()
            try:
                sock.sendall(b"anyone there?")
            except OSError:
                pass  # the blackhole may have closed already: also fine
            assert read_until_closed(sock, BLACKHOLE_CLOSE_SECONDS) == b""
            assert time.monotonic() - started < BLACKHOLE_CLOSE_SECONDS
    assert tcp_echo.accepted == 0


def test_blackhole_http_sends_exact_403_through_socks(tcp_echo: TcpEchoServer) -> None:
    # Repeated: the 403 must arrive however the client's request races the blackhole's finish.
    config = make_config([socks_inbound()], [blackhole(response="http")])
    with running_instance(config) as instance:
        received = []
        for i in range(BLACKHOLE_REPEATS):
            with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", tcp_echo.port) as sock:
                sock.sendall(get_request("/", f"127.0.0.1:{tcp_echo.port}"))
                if i == 0:  # the 403 and then a close, nothing else
                    received.append(read_until_closed(sock, BLACKHOLE_CLOSE_SECONDS + IO_TIMEOUT))
                else:  # the close comes about a second later; the 403 is what can go missing
                    received.append(_recv_or_empty(sock, len(BLACKHOLE_403)))
    assert received == [BLACKHOLE_403] * BLACKHOLE_REPEATS
    assert tcp_echo.accepted == 0


def test_a_shutdown_ends_the_blackholes_second_after_the_client_closed() -> None:
    """The client took the 403 and closed: the blackhole holds the link its second. A
    close() with no grace aborts that wait, so every thread is joined, not one left
    sleeping past the close's deadline."""
    instance = Instance(config_from_dict(make_config([socks_inbound()], [blackhole(response="http")])))
    instance.start()
    try:
        with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", 9) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert recv_exact(sock, len(BLACKHOLE_403)) == BLACKHOLE_403
            sock.shutdown(socket.SHUT_WR)  # the blackhole reads EOF and holds its second
            time.sleep(HOLD_REACHED)
            instance.close(grace=0)
            assert [t.name for t in instance.workers.live()] == []
    finally:
        if instance.running:
            instance.close()


def test_blackhole_http_through_http_inbound_plain(http_origin: HttpOrigin) -> None:
    # v2ray 4.34 answers 403 here (compared live, headers and all, in
    # test_inbound_replies_differential.py): the blackhole's response is relayed like any
    # upstream response, even though it never reads the request.
    config = make_config([http_inbound()], [blackhole(response="http")])
    with running_instance(config) as instance:
        proxy = f"http://127.0.0.1:{port_of(instance, 'http-in')}"
        assert curl_status("-x", proxy, http_origin.url + "/") == 403
        request = get_request(http_origin.url + "/", f"127.0.0.1:{http_origin.port}")
        statuses = [http_request(port_of(instance, "http-in"), request).status
                    for _ in range(BLACKHOLE_REPEATS)]
    assert statuses == [403] * BLACKHOLE_REPEATS
    assert http_origin.requests == []


def test_blackhole_http_through_http_inbound_connect(http_origin: HttpOrigin) -> None:
    config = make_config([http_inbound()], [blackhole(response="http")])
    with running_instance(config) as instance:
        proxy = f"http://127.0.0.1:{port_of(instance, 'http-in')}"
        # CONNECT succeeds; the 403 arrives inside the tunnel as the answer to curl's GET
        statuses = [curl_status("-p", "-x", proxy, http_origin.url + "/") for _ in range(CURL_REPEATS)]
    assert statuses == [403] * CURL_REPEATS
    assert http_origin.requests == []


def test_first_outbound_is_the_default(tcp_echo: TcpEchoServer) -> None:
    config = make_config([socks_inbound()], [blackhole(), freedom()])
    with running_instance(config) as instance:
        with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", tcp_echo.port) as sock:
            assert read_until_closed(sock, BLACKHOLE_CLOSE_SECONDS) == b""
    assert tcp_echo.accepted == 0


def test_bidirectional_bulk_through_socks() -> None:
    """4 MiB up and 4 MiB back at once: both pipes exert backpressure without deadlock."""
    payload = pattern_bytes(UPLOAD_BYTES)
    received = []
    with TcpEchoServer(xor=XOR_C) as echo:
        with running_instance(make_config([socks_inbound()])) as instance:
            with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", echo.port) as sock:
                reader = threading.Thread(target=lambda: received.append(recv_exact(sock, UPLOAD_BYTES)),
                                          name="bulk-reader")
                reader.start()
                sock.sendall(payload)
                reader.join(30.0)
                assert not reader.is_alive(), "download stalled"
    assert received and received[0] == xor_bytes(payload)


def test_client_half_close_still_gets_the_answer(tcp_echo: TcpEchoServer) -> None:
    """freedom never half-closes upstream; after the client's EOF the target still has
    downlinkOnly (1 s) to answer, then the connection is torn down."""
    with running_instance(make_config([socks_inbound()])) as instance:
        with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", tcp_echo.port) as sock:
            sock.sendall(b"last words")
            sock.shutdown(socket.SHUT_WR)
            started = time.monotonic()
            assert read_until_closed(sock, 5.0) == b"last words"
            assert time.monotonic() - started < 4.0
