"""Transparent proxying for real: network namespaces, veth pairs and iptables rules.

A client namespace sends TCP and UDP to an "internet" address that only exists behind the
gateway namespace (which does not forward). iptables REDIRECT or TPROXY in the gateway sends
the traffic to a dokodemo-door with ``followRedirect``, which must find the original
destination (SO_ORIGINAL_DST; the TPROXY socket's own address; IP_RECVORIGDSTADDR) and,
for UDP under TPROXY, answer from that address. Each case runs against v2sync and against
the real v2ray 4.34 with the same config and the same client, so "as 4.34 does" is checked,
not assumed. Needs root, ``ip`` and ``iptables`` (``.ci/run`` installs iptables).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from support import netns
from support.netns import INTERNET_IP, GatewayNet, entered
from support.peers import TcpEchoServer, UdpEchoServer, pattern_bytes
from support.procs import ConfigProcess, V2RayProcess, V2SyncProcess, require_v2ray

DOOR_PORT = 12345  # inside the gateway namespace: nothing else listens there
IO_TIMEOUT = 5.0
UNREACHABLE_TIMEOUT = 1.0


@pytest.fixture
def net() -> Iterator[GatewayNet]:
    if not netns.available():
        message = "needs root, ip and iptables"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    gateway_net = GatewayNet(f"v2s{os.getpid()}")
    try:
        yield gateway_net.build()
    finally:
        gateway_net.close()


@pytest.fixture
def internet(net: GatewayNet) -> Iterator[Dict[str, Any]]:
    """TCP and UDP echo servers on the internet host."""
    with entered(net.internet):
        tcp = TcpEchoServer(host="0.0.0.0")
        tcp.start()
        udp = UdpEchoServer(host="0.0.0.0")
        try:
            udp.start()
        except BaseException:
            tcp.close()
            raise
    try:
        yield {"tcp": tcp, "udp": udp}
    finally:
        tcp.close()
        udp.close()


def in_namespace(cls: type, ns: str) -> type:
    """A process class whose command runs inside namespace ``ns``."""
    class Namespaced(cls):  # type: ignore[misc, valid-type]
        def command(self, config_path: Path) -> List[str]:
            return ["ip", "netns", "exec", ns, *super().command(config_path)]

        @property
        def endpoints(self):  # ports in another namespace: wait for the ready line only
            return []
    return Namespaced


def gateway_process(implementation: str, net: GatewayNet, mode: str,
                    networks: str) -> ConfigProcess:
    door: Dict[str, Any] = {
        "tag": "door", "protocol": "dokodemo-door", "listen": "0.0.0.0", "port": DOOR_PORT,
        "settings": {"network": networks, "followRedirect": True}}
    if mode == "tproxy":
        door["streamSettings"] = {"sockopt": {"tproxy": "tproxy"}}
    config = {"log": {"loglevel": "warning"}, "inbounds": [door],
              "outbounds": [{"protocol": "freedom"}]}
    if implementation == "v2ray":
        return in_namespace(V2RayProcess, net.gateway)(config, binary=require_v2ray())
    return in_namespace(V2SyncProcess, net.gateway)(config)


def client_tcp(net: GatewayNet, port: int, timeout: float = IO_TIMEOUT) -> socket.socket:
    with entered(net.client):
        return socket.create_connection((INTERNET_IP, port), timeout)


def client_udp(net: GatewayNet) -> socket.socket:
    with entered(net.client):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(IO_TIMEOUT)
    return sock


def assert_tcp_echo(net: GatewayNet, echo: TcpEchoServer) -> None:
    payload = pattern_bytes(100_000)
    with client_tcp(net, echo.port) as sock:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(received)} bytes"
            received += chunk
    assert received == payload


def assert_unreachable_without_proxy(net: GatewayNet, echo: TcpEchoServer) -> None:
    with pytest.raises(OSError):
        client_tcp(net, echo.port, UNREACHABLE_TIMEOUT).close()


@pytest.mark.parametrize("implementation", ["v2sync", "v2ray"])
def test_redirect_tcp(net: GatewayNet, internet, implementation: str) -> None:
    echo = internet["tcp"]
    assert_unreachable_without_proxy(net, echo)
    net.redirect("tcp", DOOR_PORT)
    with gateway_process(implementation, net, "redirect", "tcp"):
        assert_tcp_echo(net, echo)
        assert echo.accepted == 1


@pytest.mark.parametrize("implementation", ["v2sync", "v2ray"])
def test_tproxy_tcp_and_udp(net: GatewayNet, internet, implementation: str) -> None:
    echo, udp_echo = internet["tcp"], internet["udp"]
    net.tproxy("tcp", DOOR_PORT)
    net.tproxy("udp", DOOR_PORT)
    with gateway_process(implementation, net, "tproxy", "tcp,udp"):
        assert_tcp_echo(net, echo)
        with client_udp(net) as sock:
            for size in (1, 512, 1400):
                payload = pattern_bytes(size)
                sock.sendto(payload, (INTERNET_IP, udp_echo.port))
                data, sender = sock.recvfrom(65536)
                assert data == payload
                # the answer comes from the address the client sent to, not the gateway
                assert sender == (INTERNET_IP, udp_echo.port)
