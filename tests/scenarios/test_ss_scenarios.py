"""Shadowsocks settings at work, in this process (issue 16, part 1): ``network`` decides which
listeners exist, the user's ``level`` picks the policy (its handshake deadline here), the
client reaches domain and IPv6 targets, and a v2sync client and server chain in one
Instance. Interop with the real v2ray is test_ss_interop.py's job."""
from __future__ import annotations

import logging
import socket
import time
from typing import Iterator

import pytest
from scenarios.helpers_scenarios import (port_of, read_socks5_reply, running_instance,
                                         socks5_greet, socks5_request)
from scenarios.ss_helpers import PASSWORD, ss_client_config, ss_server_config
from support.peers import XOR_C, TcpEchoServer, UdpEchoServer, free_port, xor_bytes

from v2sync.common.net import Address
from v2sync.proxy.shadowsocks.encoding import METHODS, Account, decode_packet, encode_packet

METHOD = "chacha20-poly1305"
ACCOUNT = Account.from_password(METHODS[METHOD], PASSWORD)
LOOPBACK = Address.parse("127.0.0.1")


def _server(network: str, **policy_levels: int):
    config = ss_server_config(0, METHOD, network=network)
    if policy_levels:
        config["policy"] = {"levels": {str(level): {"handshake": seconds}
                                       for level, seconds in policy_levels.items()}}
    return config


def test_udp_only_server_opens_no_tcp_listener() -> None:
    with running_instance(_server("udp")) as instance, UdpEchoServer(xor=XOR_C) as echo:
        handler = instance.inbounds.get("ss-in")
        assert handler.listening == [] and len(handler.udp_listeners) == 1
        port = handler.udp_listeners[0].port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            sock.sendto(encode_packet(ACCOUNT, LOOPBACK, echo.address[1], b"hi"),
                        ("127.0.0.1", port))
            assert decode_packet(ACCOUNT, sock.recv(4096))[2] == xor_bytes(b"hi")


def test_tcp_only_server_opens_no_udp_socket() -> None:
    with running_instance(_server("tcp")) as instance:
        handler = instance.inbounds.get("ss-in")
        assert len(handler.listening) == 1 and handler.udp_listeners == []


def test_the_users_level_picks_the_handshake_deadline() -> None:
    config = _server("tcp", **{"0": 30, "1": 1})
    config["inbounds"][0]["settings"]["level"] = 1
    with running_instance(config) as instance:
        port = port_of(instance, "ss-in")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"\x00" * 40)  # fewer bytes than any drain: held until the deadline
            assert sock.recv(100) == b""
            assert 0.5 < time.monotonic() - started < 6.0  # level 1's 1 s, not level 0's 30 s


@pytest.fixture(scope="module")
def chain() -> Iterator[int]:
    """One Instance holding both ends: SOCKS5 -> shadowsocks out -> shadowsocks in -> freedom."""
    ss_port, socks_port = free_port(), free_port()
    server = _server("tcp,udp")
    server["inbounds"][0]["port"] = ss_port
    server["inbounds"][0]["settings"]["email"] = "ss-user@example.test"
    client = ss_client_config(socks_port, ss_port, METHOD)
    config = {"inbounds": server["inbounds"] + client["inbounds"],
              "outbounds": server["outbounds"] + client["outbounds"],
              "routing": {"rules": [{"type": "field", "inboundTag": ["socks-in"],
                                     "outboundTag": "ss-out"}]}}
    with running_instance(config):
        yield socks_port


@pytest.mark.parametrize("host, family", [("localhost", socket.AF_INET),
                                          ("::1", socket.AF_INET6)])
def test_domain_and_ipv6_targets(chain: int, host: str, family: socket.AddressFamily,
                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="v2sync.access")
    listen = "127.0.0.1" if family == socket.AF_INET else "::1"
    try:
        echo = TcpEchoServer(xor=XOR_C, host=listen)
        echo.start()
    except OSError:
        pytest.skip(f"no {listen} on this machine")
    try:
        with socket.create_connection(("127.0.0.1", chain), timeout=10) as sock:
            socks5_greet(sock)
            if family == socket.AF_INET6:  # the shared helper speaks IPv4 and names only
                sock.sendall(b"\x05\x01\x00\x04" + socket.inet_pton(family, host)
                             + echo.address[1].to_bytes(2, "big"))
                reply = read_socks5_reply(sock)
            else:
                reply = socks5_request(sock, 1, host, echo.address[1])
            assert reply[1] == 0
            sock.sendall(b"through a named or v6 target")
            got = b""
            while len(got) < 28:
                data = sock.recv(100)
                assert data
                got += data
        assert got == xor_bytes(b"through a named or v6 target")
        # The server's access line names its user by email, as 4.34's does.
        assert "[direct] email: ss-user@example.test" in caplog.text, caplog.text
    finally:
        echo.close()
