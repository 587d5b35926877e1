"""Sniffing and the built-in DNS, end to end (issue 5 parts 4 and 5).

The client asks SOCKS for 127.0.0.2 (nothing listens there); sniffing must replace the
target with the name from the TLS SNI or HTTP Host, keep the port, and the name must then
resolve through the DNS app (hosts, or a UDP DNS server in the test) to the echo server on
127.0.0.1. The echo proves the sniffed bytes were replayed unchanged.
"""
import logging
import ssl

import pytest

from app.dns.dns_test_server import DnsTestServer
from scenarios.helpers_scenarios import (freedom, make_config, port_of, recv_exact,
                                         running_instance, socks5_tunnel, socks_inbound)
from support.peers import TcpEchoServer

UNUSED_LOOPBACK = "127.0.0.2"  # in the loopback range; nothing listens there


def client_hello(server_name: str) -> bytes:
    """A real TLS ClientHello from Python's ssl module, carrying ``server_name`` as SNI."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def sniffing_config(dest_override, dns, strategy="UseIPv4"):
    inbound = socks_inbound()
    inbound["sniffing"] = {"enabled": True, "destOverride": list(dest_override)}
    config = make_config([inbound], [freedom(domainStrategy=strategy)])
    config["dns"] = dns
    return config


def echo_through(proxy_port: int, port: int, payload: bytes) -> bytes:
    with socks5_tunnel(proxy_port, UNUSED_LOOPBACK, port) as sock:
        sock.settimeout(10)
        sock.sendall(payload)
        return recv_exact(sock, len(payload))


def test_tls_sni_rewrites_target_and_bytes_are_replayed(caplog):
    caplog.set_level(logging.INFO, logger="v2sync.access")
    hello = client_hello("sniffed.test")
    with TcpEchoServer() as echo:
        config = sniffing_config(["tls"], {"hosts": {"full:sniffed.test": "127.0.0.1"}})
        with running_instance(config) as instance:
            assert echo_through(port_of(instance, "socks-in"), echo.port, hello) == hello
        assert echo.accepted == 1  # reached through sniffed.test's host entry, port kept
    # The access line names the target asked for, as 4.34's inbounds write it before sniffing.
    assert f"accepted tcp:{UNUSED_LOOPBACK}:{echo.port}" in caplog.text


def test_http_host_rewrites_target_through_a_udp_dns_server():
    with TcpEchoServer() as echo, DnsTestServer({"web.test": ["127.0.0.1"]}) as dns:
        request = f"GET / HTTP/1.1\r\nHost: web.test:{echo.port}\r\n\r\n".encode()
        config = sniffing_config(["http"], {"servers": [
            {"address": dns.host, "port": dns.port}]})
        with running_instance(config) as instance:
            proxy = port_of(instance, "socks-in")
            assert echo_through(proxy, echo.port, request) == request
            assert echo_through(proxy, echo.port, request) == request
        assert echo.accepted == 2
        assert dns.count("web.test") == 1  # the second connection used the cached answer


def test_sniffing_does_not_override_when_protocol_not_listed():
    hello = client_hello("sniffed.test")
    with TcpEchoServer() as echo:
        config = sniffing_config(["http"], {"hosts": {"full:sniffed.test": "127.0.0.1"}})
        with running_instance(config) as instance:
            with socks5_tunnel(port_of(instance, "socks-in"), UNUSED_LOOPBACK, echo.port) as s:
                s.settimeout(10)
                s.sendall(hello)
                # the target stays 127.0.0.2, where nothing listens: the tunnel just closes
                assert s.recv(1024) == b""
        assert echo.accepted == 0


def test_unknown_content_is_forwarded_unchanged_after_the_sniff_window():
    payload = b"\x00\x01 not http, not tls" * 10
    with TcpEchoServer() as echo:
        inbound = socks_inbound()
        inbound["sniffing"] = {"enabled": True, "destOverride": ["http", "tls"]}
        with running_instance(make_config([inbound], [freedom()])) as instance:
            with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", echo.port) as s:
                s.settimeout(10)
                s.sendall(payload)
                assert recv_exact(s, len(payload)) == payload


def test_server_speaks_first_is_not_blocked_by_sniffing():
    with TcpEchoServer(send_first=b"hello-from-server") as echo:
        inbound = socks_inbound()
        inbound["sniffing"] = {"enabled": True, "destOverride": ["http", "tls"]}
        with running_instance(make_config([inbound], [freedom()])) as instance:
            with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", echo.port) as s:
                s.settimeout(10)
                assert recv_exact(s, 17) == b"hello-from-server"


def test_freedom_use_ipv4_resolves_through_dns_hosts():
    with TcpEchoServer() as echo:
        config = make_config([socks_inbound()], [freedom(domainStrategy="UseIPv4")])
        config["dns"] = {"hosts": {"domain:corp.test": "127.0.0.1"}}
        with running_instance(config) as instance:
            with socks5_tunnel(port_of(instance, "socks-in"), "api.corp.test", echo.port) as s:
                s.settimeout(10)
                s.sendall(b"ping")
                assert recv_exact(s, 4) == b"ping"
