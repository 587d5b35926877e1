"""An inbound on port 0 with UDP: the kernel picks its TCP port, and the UDP port of the
same number may be any socket's (UDP clients autobind in the same range); the start then
failed at random ("address already in use", seen in the suite by a flake hunt). It now
lets that TCP port go and picks again.

Made certain in a namespace of its own whose ephemeral range is two ports: Linux's bind()
picks the odd one first, and a UDP socket holds that one, so without the retry every start
fails.
"""
from __future__ import annotations

import socket

import pytest

from scenarios.helpers_scenarios import port_of, running_instance
from support.netns import entered, loopback_namespace

RANGE = (40000, 40001)
STARTS = 10


@pytest.fixture
def narrow_namespace():
    with loopback_namespace("v2s-port0", {
            "net.ipv4.ip_local_port_range": f"{RANGE[0]} {RANGE[1]}"}) as name:
        yield name


def test_port_zero_with_udp_picks_a_port_whose_udp_twin_is_free(narrow_namespace: str) -> None:
    config = {"log": {"loglevel": "warning"},
              "inbounds": [{"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1",
                            "port": 0, "settings": {"auth": "noauth", "udp": True}}],
              "outbounds": [{"protocol": "freedom"}]}
    with entered(narrow_namespace), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", RANGE[1]))
        ports = set()
        for _ in range(STARTS):
            with running_instance(config) as instance:
                ports.add(port_of(instance, "socks-in"))
    assert ports == {RANGE[0]}
