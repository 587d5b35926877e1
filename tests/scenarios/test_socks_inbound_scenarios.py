"""The SOCKS inbound end to end: curl and PySocks (independent clients) -> v2sync -> freedom.

SOCKS 5 (no auth and RFC 1929 password), 4 and 4a, UDP ASSOCIATE relayed to a UDP echo
server, and the refusals 4.34 sends byte for byte: BIND and disabled UDP get reply 0x07,
SOCKS4 under password auth gets 0x5B (v2ray ``proxy/socks/protocol.go``). The CONNECT reply
carries the inbound's listen address and port. The same replies are compared with the real
binary's in test_inbound_replies_differential.py.
"""
from __future__ import annotations

import socket
import struct
from typing import Any, Iterator

import pytest
import socks  # PySocks
from scenarios.helpers_scenarios import (ATYP_IPV4, CMD_BIND, CMD_CONNECT, CMD_UDP, IO_TIMEOUT,
                                         REPLY_CMD_NOT_SUPPORTED, REPLY_SUCCEEDED, SOCKS4_GRANTED,
                                         SOCKS4_REJECTED, accounts, connect, curl, curl_ok,
                                         get_request, make_config, port_of, read_http_response,
                                         read_until_closed, recv_exact, running_instance,
                                         socks4_request, socks5_greet, socks5_request,
                                         socks_inbound)
from support.peers import (HttpOrigin, TcpEchoServer, UdpEchoServer, XOR_C, free_port,
                           pattern_bytes, xor_bytes)
from support.procs import V2RayProcess, V2SyncProcess

USER, PASSWORD = "bob", "hunter2"
DATAGRAMS = 8


@pytest.fixture
def socks_port() -> Iterator[int]:
    """Port of a no-auth SOCKS inbound (UDP off) -> freedom."""
    with running_instance(make_config([socks_inbound()])) as instance:
        yield port_of(instance, "socks-in")


@pytest.fixture
def password_port() -> Iterator[int]:
    config = make_config([socks_inbound(auth="password", accounts=accounts((USER, PASSWORD)))])
    with running_instance(config) as instance:
        yield port_of(instance, "socks-in")


@pytest.fixture
def udp_socks_port() -> Iterator[int]:
    with running_instance(make_config([socks_inbound(udp=True)])) as instance:
        yield port_of(instance, "socks-in")


# -- curl -------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, host", [
    ("--socks5", "127.0.0.1"),
    ("--socks5-hostname", "localhost"),  # the proxy resolves the name
    ("--socks4", "127.0.0.1"),
    ("--socks4a", "localhost"),
])
def test_curl_through_socks(option: str, host: str, socks_port: int, http_origin: HttpOrigin) -> None:
    url = f"http://{host}:{http_origin.port}"
    assert curl_ok(option, f"127.0.0.1:{socks_port}", url + "/") == b"Home"
    assert curl_ok(option, f"127.0.0.1:{socks_port}", url + "/bytes/200000") == pattern_bytes(200000)
    assert http_origin.requests[-1].header("Host") == f"{host}:{http_origin.port}"


def test_curl_socks5_password_right(password_port: int, http_origin: HttpOrigin) -> None:
    proxy = f"{USER}:{PASSWORD}@127.0.0.1:{password_port}"
    assert curl_ok("--socks5", proxy, http_origin.url + "/") == b"Home"
    assert curl_ok("--socks5-hostname", proxy, f"http://localhost:{http_origin.port}/") == b"Home"


@pytest.mark.parametrize("credentials", [f"{USER}:wrong", f"nobody:{PASSWORD}", ""])
def test_curl_socks5_password_wrong_or_missing(credentials: str, password_port: int,
                                               http_origin: HttpOrigin) -> None:
    proxy = f"{credentials}@127.0.0.1:{password_port}" if credentials else f"127.0.0.1:{password_port}"
    result = curl("--socks5", proxy, http_origin.url + "/")
    assert result.returncode != 0, result.stdout
    assert result.stdout == b""
    assert http_origin.requests == []


def test_wrong_password_gets_rfc1929_failure(password_port: int) -> None:
    with connect(password_port) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert recv_exact(sock, 2) == b"\x05\x02"
        sock.sendall(bytes([1, len(USER)]) + USER.encode() + b"\x03bad")
        status = recv_exact(sock, 2)
        assert status[0] == 0x01 and status[1] != 0x00, status
        assert read_until_closed(sock) == b""


def test_no_acceptable_method(password_port: int) -> None:
    with connect(password_port) as sock:
        sock.sendall(b"\x05\x01\x00")  # offers only "no auth"; the server wants a password
        assert recv_exact(sock, 2) == b"\x05\xff"
        assert read_until_closed(sock) == b""


# -- PySocks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rdns, host", [(False, "127.0.0.1"), (True, "localhost"), (False, "localhost")])
def test_pysocks_socks5_echo(rdns: bool, host: str, socks_port: int) -> None:
    payload = b"pysocks says hello " * 100
    with TcpEchoServer(xor=XOR_C) as echo:
        with socks.socksocket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.set_proxy(socks.SOCKS5, "127.0.0.1", socks_port, rdns=rdns)
            sock.settimeout(IO_TIMEOUT)
            sock.connect((host, echo.port))
            sock.sendall(payload)
            received = b""
            while len(received) < len(payload):
                chunk = sock.recv(65536)
                assert chunk, f"closed after {len(received)} bytes"
                received += chunk
    assert received == xor_bytes(payload)


def test_pysocks_socks5_password(password_port: int, http_origin: HttpOrigin) -> None:
    with socks.socksocket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", password_port, rdns=True,
                       username=USER, password=PASSWORD)
        sock.settimeout(IO_TIMEOUT)
        sock.connect(("localhost", http_origin.port))
        sock.sendall(get_request("/", f"localhost:{http_origin.port}", "Connection: close\r\n"))
        response, _ = read_http_response(sock)
    assert (response.status, response.body) == (200, b"Home")


def test_pysocks_wrong_password_raises(password_port: int, http_origin: HttpOrigin) -> None:
    with socks.socksocket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", password_port, username=USER, password="x")
        sock.settimeout(IO_TIMEOUT)
        # PySocks wraps its SOCKS5AuthError in a GeneralProxyError
        with pytest.raises(socks.ProxyError, match="SOCKS5 authentication failed"):
            sock.connect(("127.0.0.1", http_origin.port))


def test_pysocks_socks4(socks_port: int, http_origin: HttpOrigin) -> None:
    with socks.socksocket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.set_proxy(socks.SOCKS4, "127.0.0.1", socks_port, rdns=True)  # rdns: SOCKS4a
        sock.settimeout(IO_TIMEOUT)
        sock.connect(("localhost", http_origin.port))
        sock.sendall(get_request("/", f"localhost:{http_origin.port}", "Connection: close\r\n"))
        response, _ = read_http_response(sock)
    assert (response.status, response.body) == (200, b"Home")


# -- replies byte for byte --------------------------------------------------------------------

def test_connect_reply_carries_listen_address_and_port(socks_port: int, http_origin: HttpOrigin) -> None:
    with connect(socks_port) as sock:
        socks5_greet(sock)
        reply = socks5_request(sock, CMD_CONNECT, "127.0.0.1", http_origin.port)
        assert reply == (bytes([5, REPLY_SUCCEEDED, 0, ATYP_IPV4]) + socket.inet_aton("127.0.0.1")
                         + struct.pack("!H", socks_port))
        # bytes pipelined right behind the request still reach the target
        sock.sendall(get_request("/", f"127.0.0.1:{http_origin.port}", "Connection: close\r\n"))
        response, _ = read_http_response(sock)
    assert response.body == b"Home"


def test_socks4_reply_granted(socks_port: int, http_origin: HttpOrigin) -> None:
    with connect(socks_port) as sock:
        sock.sendall(socks4_request("127.0.0.1", http_origin.port, b"someone"))
        reply = recv_exact(sock, 8)
        assert reply[:2] == bytes([0, SOCKS4_GRANTED])
        sock.sendall(get_request("/", f"127.0.0.1:{http_origin.port}", "Connection: close\r\n"))
        assert read_http_response(sock)[0].body == b"Home"


def test_socks4_refused_when_auth_is_password(password_port: int, http_origin: HttpOrigin) -> None:
    with connect(password_port) as sock:
        sock.sendall(socks4_request("127.0.0.1", http_origin.port))
        reply = recv_exact(sock, 8)
        assert reply[:2] == bytes([0, SOCKS4_REJECTED])
        assert read_until_closed(sock) == b""
    with connect(password_port) as sock:  # 4a too
        sock.sendall(socks4_request("", http_origin.port, domain="localhost"))
        assert recv_exact(sock, 8)[:2] == bytes([0, SOCKS4_REJECTED])
        assert read_until_closed(sock) == b""
    assert http_origin.requests == []


def test_bind_is_refused_with_0x07(socks_port: int, http_origin: HttpOrigin) -> None:
    with connect(socks_port) as sock:
        socks5_greet(sock)
        reply = socks5_request(sock, CMD_BIND, "127.0.0.1", http_origin.port)
        assert reply[:2] == bytes([5, REPLY_CMD_NOT_SUPPORTED])
        assert read_until_closed(sock) == b""


def test_udp_associate_refused_when_udp_is_off(socks_port: int) -> None:
    with connect(socks_port) as sock:
        socks5_greet(sock)
        reply = socks5_request(sock, CMD_UDP, "0.0.0.0", 0)
        assert reply[:2] == bytes([5, REPLY_CMD_NOT_SUPPORTED])
        assert read_until_closed(sock) == b""


def test_udp_associate_reply_points_at_the_inbound(udp_socks_port: int) -> None:
    with connect(udp_socks_port) as sock:
        socks5_greet(sock)
        reply = socks5_request(sock, CMD_UDP, "0.0.0.0", 0)
    assert reply == (bytes([5, REPLY_SUCCEEDED, 0, ATYP_IPV4]) + socket.inet_aton("127.0.0.1")
                     + struct.pack("!H", udp_socks_port))


# -- UDP --------------------------------------------------------------------------------------

def test_udp_associate_through_pysocks(udp_socks_port: int) -> None:
    with UdpEchoServer(xor=XOR_C) as echo:
        with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.set_proxy(socks.SOCKS5, "127.0.0.1", udp_socks_port)
            sock.settimeout(IO_TIMEOUT)
            for i in range(DATAGRAMS):
                payload = f"datagram {i} ".encode() * (i * 20 + 1)
                sock.sendto(payload, ("127.0.0.1", echo.port))
                data, source = sock.recvfrom(4096)
                assert data == xor_bytes(payload), f"datagram {i}"
                assert source == ("127.0.0.1", echo.port)
        assert echo.datagrams == DATAGRAMS


def test_udp_to_two_targets_in_one_association(udp_socks_port: int) -> None:
    with UdpEchoServer() as plain, UdpEchoServer(xor=XOR_C) as xored:
        with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.set_proxy(socks.SOCKS5, "127.0.0.1", udp_socks_port)
            sock.settimeout(IO_TIMEOUT)
            sock.sendto(b"to plain", ("127.0.0.1", plain.port))
            assert sock.recvfrom(4096) == (b"to plain", ("127.0.0.1", plain.port))
            sock.sendto(b"to xored", ("127.0.0.1", xored.port))
            assert sock.recvfrom(4096) == (xor_bytes(b"to xored"), ("127.0.0.1", xored.port))


def test_udp_to_a_domain_name_target(udp_socks_port: int) -> None:
    with UdpEchoServer(xor=XOR_C) as echo:
        with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.set_proxy(socks.SOCKS5, "127.0.0.1", udp_socks_port, rdns=True)  # ATYP domain
            sock.settimeout(IO_TIMEOUT)
            sock.sendto(b"by name", ("localhost", echo.port))
            data, _ = sock.recvfrom(4096)
    assert data == xor_bytes(b"by name")


def test_socks5_ipv6_target(socks_port: int) -> None:
    with HttpOrigin(host="::1") as origin6:
        assert curl_ok("--socks5", f"127.0.0.1:{socks_port}", origin6.url + "/") == b"Home"
        with connect(socks_port) as sock:
            socks5_greet(sock)
            sock.sendall(b"\x05\x01\x00\x04" + socket.inet_pton(socket.AF_INET6, "::1")
                         + struct.pack("!H", origin6.port))
            reply = recv_exact(sock, 10)  # the reply carries the IPv4 listen address
            assert reply[:2] == bytes([5, REPLY_SUCCEEDED])
            sock.sendall(get_request("/", f"[::1]:{origin6.port}", "Connection: close\r\n"))
            assert read_http_response(sock)[0].body == b"Home"


def _connect_reply(process_class: Any, echo_port: int) -> bytes:
    port = free_port()
    config = {"log": {"loglevel": "warning"},
              "inbounds": [{"protocol": "socks", "listen": "::", "port": port,
                            "settings": {"auth": "noauth"}}],
              "outbounds": [{"protocol": "freedom"}]}
    with process_class(config), socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + echo_port.to_bytes(2, "big"))
        reply = b""
        while len(reply) < 22:
            chunk = sock.recv(22 - len(reply))
            if not chunk:
                break
            reply += chunk
    return reply[:-2]  # each proxy's own port last


def test_a_connect_reply_names_the_listen_address_as_4_34(v2ray_bin: str) -> None:
    """An inbound listening on ``::`` answers CONNECT with ``::`` (atyp 4), as 4.34."""
    with TcpEchoServer() as echo:
        ours = _connect_reply(V2SyncProcess, echo.port)
        assert ours == _connect_reply(V2RayProcess, echo.port)
    assert ours == b"\x05\x00\x00\x04" + bytes(16)
