"""Users changed at run time (the UserManager the API calls) and VLESS's Mux command, on
an in-process instance with raw clients: a user added connects at once, a removed one is
refused from its next connection on; command 3 reaches the Mux.cool server."""
from __future__ import annotations

import socket
from typing import Iterator

import pytest
from scenarios.helpers_scenarios import (connect, make_config, port_of, recv_exact,
                                         running_instance)
from scenarios.keyed_helpers import PASSWORD, STRANGER_ID, USER_ID
from support.peers import XOR_C, TcpEchoServer, UdpEchoServer, xor_bytes

from v2sync.common.errors import ConfigError, UserNotFound
from v2sync.common.mux.encoding import Status, encode_frame, parse_frame
from v2sync.common.net import Address, Destination, Network
from v2sync.common.protocol.packets import (PacketStream, encode_trojan_packets,
                                            parse_trojan_packet)
from v2sync.proxy.trojan.encoding import (Command as TrojanCommand, RequestHeader as TrojanHeader,
                                          encode_request_header as trojan_header, password_key)
from v2sync.proxy.vless.encoding import (MUX_DESTINATION, Command, RequestHeader,
                                         encode_request_header)
from v2sync.proxy.vmess.ids import parse_uuid

PAYLOAD = b"hello through a user added at run time"
UDP_WAIT = 3.0


@pytest.fixture
def setup() -> Iterator:
    with TcpEchoServer(xor=XOR_C) as echo:
        inbounds = [
            {"tag": "vless-in", "protocol": "vless", "listen": "127.0.0.1", "port": 0,
             "settings": {"decryption": "none", "clients": [{"id": USER_ID, "email": "u@x"}]}},
            {"tag": "trojan-in", "protocol": "trojan", "listen": "127.0.0.1", "port": 0,
             "settings": {"clients": [{"password": PASSWORD, "email": "u@x"}]}}]
        with running_instance(make_config(inbounds)) as instance:
            yield instance, echo


def _vless(port: int, user: str, echo: TcpEchoServer) -> bytes:
    header = RequestHeader(parse_uuid(user), Command.TCP, Address.parse("127.0.0.1"), echo.port)
    with connect(port) as sock:
        sock.sendall(encode_request_header(header) + PAYLOAD)
        try:
            return recv_exact(sock, 2 + len(PAYLOAD))
        except AssertionError:
            return b""


def _trojan(port: int, password: str, echo: TcpEchoServer) -> bytes:
    header = TrojanHeader(password_key(password), TrojanCommand.TCP,
                          Address.parse("127.0.0.1"), echo.port)
    with connect(port) as sock:
        sock.sendall(trojan_header(header) + PAYLOAD)
        try:
            return recv_exact(sock, len(PAYLOAD))
        except AssertionError:
            return b""


def test_users_added_and_removed_at_run_time(setup) -> None:
    instance, echo = setup
    vless = instance.inbounds.get("vless-in")
    trojan = instance.inbounds.get("trojan-in")
    vless_port, trojan_port = port_of(instance, "vless-in"), port_of(instance, "trojan-in")
    assert _vless(vless_port, STRANGER_ID, echo) == b""
    vless.proxy.add_user({"id": STRANGER_ID, "email": "new@x", "level": 0})
    assert _vless(vless_port, STRANGER_ID, echo) == b"\x00\x00" + xor_bytes(PAYLOAD)
    trojan.proxy.add_user({"password": "new password", "email": "new@x"})
    assert _trojan(trojan_port, "new password", echo) == xor_bytes(PAYLOAD)
    with pytest.raises(ConfigError, match="already exists"):
        vless.proxy.add_user({"id": USER_ID, "email": "NEW@x"})
    with pytest.raises(ConfigError, match="failed to parse ID"):
        vless.proxy.add_user({"id": "not-a-uuid"})
    vless.proxy.remove_user("new@x")
    trojan.proxy.remove_user("NEW@X")
    assert _vless(vless_port, STRANGER_ID, echo) == b""
    assert _trojan(trojan_port, "new password", echo) == b""
    assert _vless(vless_port, USER_ID, echo) == b"\x00\x00" + xor_bytes(PAYLOAD)
    with pytest.raises(UserNotFound):
        trojan.proxy.remove_user("new@x")


def test_vless_mux_command_reaches_the_mux_server(setup) -> None:
    """Raw bytes: the VLESS header with command 3, then a Mux.cool New frame with data; the
    answer is VLESS's ``ver | addons`` followed by Mux.cool frames carrying the echo."""
    instance, echo = setup
    mux = RequestHeader(parse_uuid(USER_ID), Command.MUX, MUX_DESTINATION.address, 0)
    target = Destination(Address.parse("127.0.0.1"), echo.port)
    with connect(port_of(instance, "vless-in")) as sock:
        sock.sendall(encode_request_header(mux) + encode_frame(1, Status.NEW, PAYLOAD, target))
        assert recv_exact(sock, 2) == b"\x00\x00"
        buf, data = b"", b""
        while len(data) < len(PAYLOAD):
            parsed = parse_frame(buf)
            if parsed is None:
                chunk = sock.recv(65536)
                assert chunk, "closed before the echo came back"
                buf += chunk
                continue
            frame, used = parsed
            buf = buf[used:]
            assert frame.session_id == 1
            data += frame.data or b""
    assert data == xor_bytes(PAYLOAD)


def _trojan_udp(port: int, password: str, target: Destination, payload: bytes) -> bytes:
    """One datagram through a raw Trojan UDP request (command 3); its answer or b""."""
    header = TrojanHeader(password_key(password), TrojanCommand.UDP, target.address,
                          target.port)
    with connect(port) as sock:
        sock.sendall(trojan_header(header) + encode_trojan_packets(target, payload))
        stream: PacketStream = PacketStream(parse_trojan_packet)
        sock.settimeout(UDP_WAIT)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return b""
                packets = stream.feed(chunk)
                if packets:
                    assert packets[0].target == target
                    return packets[0].payload
        except socket.timeout:
            return b""


def test_trojan_udp_sessions_carry_the_user_for_routing() -> None:
    """A ``user`` rule sends only the Trojan user u@x's datagrams to freedom; another user's
    go to the default blackhole."""
    inbound = {"tag": "trojan-in", "protocol": "trojan", "listen": "127.0.0.1", "port": 0,
               "settings": {"clients": [{"password": PASSWORD, "email": "u@x"},
                                        {"password": "other", "email": "o@x"}]}}
    config = make_config([inbound], [{"tag": "block", "protocol": "blackhole"},
                                     {"tag": "direct", "protocol": "freedom"}])
    config["routing"] = {"rules": [{"type": "field", "user": ["u@x"], "outboundTag": "direct"}]}
    with UdpEchoServer(xor=XOR_C) as echo, running_instance(config) as instance:
        port = port_of(instance, "trojan-in")
        target = Destination(Address.parse("127.0.0.1"), echo.address[1], Network.UDP)
        assert _trojan_udp(port, PASSWORD, target, b"dns?") == xor_bytes(b"dns?")
        assert _trojan_udp(port, "other", target, b"dns?") == b""
