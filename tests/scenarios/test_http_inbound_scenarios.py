"""The HTTP proxy inbound end to end: curl (and raw sockets for exact replies) -> v2sync -> origin.

Covers plain forwarding (GET, POST, keep-alive), CONNECT, Basic auth for both, relative URLs
with and without ``allowTransparent``, 503 on upstream failure and hop-by-hop header removal
(v2ray ``proxy/http/server.go``; behaviour list in the reference notes §3).
"""
from __future__ import annotations

import base64
import os
from typing import Iterator

import pytest
from scenarios.helpers_scenarios import (accounts, connect, curl, curl_ok, curl_status,
                                         get_request, http_inbound, http_request, make_config,
                                         port_of, read_http_response, read_until_closed,
                                         running_instance)
from support.peers import HttpOrigin, free_port, pattern_bytes

USER, PASSWORD = "alice", "s3cret"
REALM_HEADER = 'Basic realm="proxy"'


@pytest.fixture
def http_proxy() -> Iterator[int]:
    """Port of a no-auth HTTP inbound -> freedom."""
    with running_instance(make_config([http_inbound()])) as instance:
        yield port_of(instance, "http-in")


@pytest.fixture
def auth_proxy() -> Iterator[int]:
    """Port of an HTTP inbound that requires alice:s3cret."""
    config = make_config([http_inbound(accounts=accounts((USER, PASSWORD)))])
    with running_instance(config) as instance:
        yield port_of(instance, "http-in")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _proxy(port: int) -> str:
    return f"http://127.0.0.1:{port}"


# -- plain forwarding -------------------------------------------------------------------------

def test_plain_get_through_http_proxy(http_proxy: int, http_origin: HttpOrigin) -> None:
    assert curl_ok("-x", _proxy(http_proxy), http_origin.url + "/") == b"Home"
    assert curl_ok("-x", _proxy(http_proxy), http_origin.url + "/bytes/100000") == pattern_bytes(100000)
    assert [r.path for r in http_origin.requests] == ["/", "/bytes/100000"]  # origin-form upstream


def test_post_body_is_forwarded_intact(http_proxy: int, http_origin: HttpOrigin, tmp_path) -> None:
    body = os.urandom(300 * 1024)  # larger than one relay read and than the socket buffers
    payload = tmp_path / "body.bin"
    payload.write_bytes(body)
    out = curl_ok("-x", _proxy(http_proxy), "--data-binary", f"@{payload}",
                  "-H", "Content-Type: application/octet-stream", http_origin.url + "/echo")
    assert out == body
    assert http_origin.requests[-1].method == "POST"
    assert http_origin.requests[-1].body_length == len(body)


def test_keep_alive_reuses_one_client_connection(http_proxy: int, http_origin: HttpOrigin) -> None:
    result = curl("-v", "-x", _proxy(http_proxy), http_origin.url + "/", http_origin.url + "/bytes/10")
    log = result.stderr.decode(errors="replace")
    assert result.returncode == 0, log
    assert result.stdout == b"Home" + pattern_bytes(10)
    assert "Re-using existing connection" in log, log
    assert log.count("Connected to 127.0.0.1") == 1, log
    assert "< Keep-Alive: timeout=4" in log, log


def test_keep_alive_two_requests_on_one_raw_socket(http_proxy: int, http_origin: HttpOrigin) -> None:
    host = f"127.0.0.1:{http_origin.port}"
    with connect(http_proxy) as sock:
        sock.sendall(get_request(http_origin.url + "/", host, "Proxy-Connection: keep-alive\r\n"))
        first, rest = read_http_response(sock)
        sock.sendall(get_request(http_origin.url + "/bytes/5", host, "Proxy-Connection: keep-alive\r\n"))
        second, rest = read_http_response(sock, rest)
    assert (first.status, first.body) == (200, b"Home")
    assert first.header("Keep-Alive") == "timeout=4"
    assert (second.status, second.body) == (200, pattern_bytes(5))
    assert second.header("Keep-Alive") == "timeout=4"
    assert rest == b""


def test_request_without_proxy_keep_alive_is_closed_after_the_response(
        http_proxy: int, http_origin: HttpOrigin) -> None:
    """4.34 keeps a client connection only for ``Proxy-Connection: keep-alive``; its headers
    still say keep-alive when the length is known (the same probe is compared with the real
    v2ray in test_inbound_replies_differential.py)."""
    host = f"127.0.0.1:{http_origin.port}"
    with connect(http_proxy) as sock:
        sock.sendall(get_request(http_origin.url + "/", host, "Connection: close\r\n"))
        response, rest = read_http_response(sock)
        assert read_until_closed(sock) == b""  # the proxy closes after the response
    assert (response.status, response.body) == (200, b"Home")
    assert response.header("Keep-Alive") == "timeout=4"


def test_hop_by_hop_headers_are_removed(auth_proxy: int, http_origin: HttpOrigin) -> None:
    host = f"127.0.0.1:{http_origin.port}"
    extra = ("Proxy-Connection: keep-alive\r\n"
             f"Proxy-Authorization: {_basic(USER, PASSWORD)}\r\n"
             "Connection: X-Secret-Hop\r\n"
             "X-Secret-Hop: 1\r\n"
             "X-End-To-End: kept\r\n")
    # A Host header that disagrees with the absolute URI: the URI wins (RFC 7230 §5.4).
    response = http_request(auth_proxy, get_request(http_origin.url + "/", "wrong.invalid:1", extra))
    assert (response.status, response.body) == (200, b"Home")
    seen = http_origin.requests[-1]
    assert seen.path == "/"
    for name in ("Proxy-Connection", "Proxy-Authorization", "X-Secret-Hop"):
        assert seen.header(name) is None, f"{name} reached the origin: {seen.headers}"
    assert seen.header("X-End-To-End") == "kept"
    assert seen.header("Host") == host


# -- CONNECT ----------------------------------------------------------------------------------

def test_connect_tunnel_with_curl(http_proxy: int, http_origin: HttpOrigin) -> None:
    out = curl_ok("-p", "-x", _proxy(http_proxy), http_origin.url + "/bytes/70000")
    assert out == pattern_bytes(70000)
    seen = http_origin.requests[-1]
    assert seen.path == "/bytes/70000"
    assert seen.header("Proxy-Connection") is None  # curl sends it on CONNECT only, not inside


def test_connect_reply_is_v2ray_exact(http_proxy: int, http_origin: HttpOrigin) -> None:
    with connect(http_proxy) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{http_origin.port} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{http_origin.port}\r\n\r\n".encode())
        established = b"HTTP/1.1 200 Connection established\r\n\r\n"
        got = b""
        while len(got) < len(established):
            chunk = sock.recv(len(established) - len(got))
            assert chunk, f"closed after {got!r}"
            got += chunk
        assert got == established
        sock.sendall(get_request("/", f"127.0.0.1:{http_origin.port}", "Connection: close\r\n"))
        response, _ = read_http_response(sock)
    assert (response.status, response.body) == (200, b"Home")


# -- Basic auth -------------------------------------------------------------------------------

def test_plain_without_credentials_gets_407(auth_proxy: int, http_origin: HttpOrigin) -> None:
    host = f"127.0.0.1:{http_origin.port}"
    response = http_request(auth_proxy, get_request(http_origin.url + "/", host))
    assert response.status == 407
    assert response.header("Proxy-Authenticate") == REALM_HEADER
    assert http_origin.requests == []


def test_plain_with_wrong_credentials_gets_407(auth_proxy: int, http_origin: HttpOrigin) -> None:
    assert curl_status("-x", _proxy(auth_proxy), "-U", f"{USER}:wrong", http_origin.url + "/") == 407
    assert curl_status("-x", _proxy(auth_proxy), "-U", f"mallory:{PASSWORD}",
                       http_origin.url + "/") == 407
    assert http_origin.requests == []


def test_plain_with_right_credentials(auth_proxy: int, http_origin: HttpOrigin) -> None:
    out = curl_ok("-x", _proxy(auth_proxy), "-U", f"{USER}:{PASSWORD}", http_origin.url + "/")
    assert out == b"Home"


def test_connect_without_credentials_gets_407(auth_proxy: int, http_origin: HttpOrigin) -> None:
    authority = f"127.0.0.1:{http_origin.port}"
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    response = http_request(auth_proxy, request)
    assert response.status == 407
    assert response.header("Proxy-Authenticate") == REALM_HEADER


def test_connect_with_wrong_credentials_is_refused(auth_proxy: int, http_origin: HttpOrigin) -> None:
    authority = f"127.0.0.1:{http_origin.port}"
    request = (f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
               f"Proxy-Authorization: {_basic(USER, 'nope')}\r\n\r\n").encode()
    response = http_request(auth_proxy, request)
    assert response.status == 407
    assert response.header("Proxy-Authenticate") == REALM_HEADER
    result = curl("-p", "-x", _proxy(auth_proxy), "-U", f"{USER}:nope", http_origin.url + "/")
    assert result.returncode != 0
    assert b"407" in result.stderr
    assert http_origin.requests == []


def test_connect_with_right_credentials(auth_proxy: int, http_origin: HttpOrigin) -> None:
    out = curl_ok("-p", "-x", _proxy(auth_proxy), "-U", f"{USER}:{PASSWORD}", http_origin.url + "/")
    assert out == b"Home"


# -- relative URLs, failures ------------------------------------------------------------------

def test_relative_url_without_allow_transparent_gets_400(http_proxy: int,
                                                          http_origin: HttpOrigin) -> None:
    with connect(http_proxy) as sock:
        sock.sendall(get_request("/", f"127.0.0.1:{http_origin.port}"))
        response, _ = read_http_response(sock)
        assert read_until_closed(sock) == b""
    assert response.status == 400
    assert http_origin.requests == []


def test_relative_url_with_allow_transparent_is_forwarded(http_origin: HttpOrigin) -> None:
    config = make_config([http_inbound(allowTransparent=True)])
    with running_instance(config) as instance:
        response = http_request(port_of(instance, "http-in"),
                                get_request("/", f"127.0.0.1:{http_origin.port}"))
    assert (response.status, response.body) == (200, b"Home")
    assert http_origin.requests[-1].path == "/"


def test_upstream_failure_gets_503(http_proxy: int) -> None:
    closed_port = free_port()  # nothing listens there: freedom's dial is refused
    with connect(http_proxy) as sock:
        sock.sendall(get_request(f"http://127.0.0.1:{closed_port}/", f"127.0.0.1:{closed_port}"))
        response, _ = read_http_response(sock)
        assert read_until_closed(sock) == b""
    assert response.status == 503


def test_upstream_closing_without_response_gets_503(http_proxy: int, http_origin: HttpOrigin) -> None:
    status = curl_status("-x", _proxy(http_proxy), http_origin.url + "/close")
    assert status == 503
    assert curl_ok("-x", _proxy(http_proxy), http_origin.url + "/") == b"Home"  # still serving


def test_pipelined_requests_in_one_write(http_proxy: int, http_origin: HttpOrigin) -> None:
    host = f"127.0.0.1:{http_origin.port}"
    both = (get_request(http_origin.url + "/bytes/3", host, "Proxy-Connection: keep-alive\r\n")
            + get_request(http_origin.url + "/", host, "Connection: close\r\n"))
    with connect(http_proxy) as sock:
        sock.sendall(both)
        first, rest = read_http_response(sock)
        second, rest = read_http_response(sock, rest)
        assert rest + read_until_closed(sock) == b""
    assert (first.status, first.body) == (200, pattern_bytes(3))
    assert (second.status, second.body) == (200, b"Home")


def test_origin_status_is_passed_through(http_proxy: int, http_origin: HttpOrigin) -> None:
    assert curl_status("-x", _proxy(http_proxy), http_origin.url + "/no-such-page") == 404


def test_ipv6_targets(http_proxy: int) -> None:
    with HttpOrigin(host="::1") as origin6:
        assert curl_ok("-x", _proxy(http_proxy), origin6.url + "/") == b"Home"
        assert curl_ok("-p", "-x", _proxy(http_proxy), origin6.url + "/") == b"Home"
        assert origin6.requests[0].header("Host") == f"[::1]:{origin6.port}"
