"""dokodemo-door end to end: fixed destinations over TCP and UDP, in this process (so
threads, fds and UDP sessions can be counted) and against the real v2ray."""
from __future__ import annotations

import socket
from typing import Any, Dict

import pytest

from helpers_scenarios import (IO_TIMEOUT, closed_within, freedom, make_config, port_of,
                               recv_exact, running_instance, wait_idle)
from support.peers import TcpEchoServer, pattern_bytes
from support.resources import snapshot, wait_for_snapshot

from v2sync.common.errors import V2SyncError
from v2sync.core import Instance
from v2sync.infra.conf.builder import config_from_dict


def dokodemo(tag: str = "door", listen_port: int = 0, **settings: Any) -> Dict[str, Any]:
    """``settings`` are the door's own (its ``port`` is the destination's)."""
    return {"tag": tag, "protocol": "dokodemo-door", "listen": "127.0.0.1", "port": listen_port,
            "settings": dict(settings)}


def test_tcp_to_a_fixed_destination(tcp_echo: TcpEchoServer) -> None:
    config = make_config([dokodemo(address="127.0.0.1", port=tcp_echo.port)], [freedom()])
    with running_instance(config) as instance:
        payload = pattern_bytes(300_000)
        with socket.create_connection(("127.0.0.1", port_of(instance, "door")),
                                      IO_TIMEOUT) as sock:
            sock.sendall(payload)
            assert recv_exact(sock, len(payload)) == payload
        wait_idle(instance)


def test_tcp_without_a_destination_is_closed() -> None:
    """No address and no redirect: 4.34 ends the connection ("unable to get destination")."""
    config = make_config([dokodemo()], [freedom()])
    with running_instance(config) as instance:
        with socket.create_connection(("127.0.0.1", port_of(instance, "door")),
                                      IO_TIMEOUT) as sock:
            sock.settimeout(IO_TIMEOUT)
            assert sock.recv(1) == b""
        wait_idle(instance)


def test_udp_only_door_opens_no_tcp_listener(udp_echo) -> None:
    config = make_config([dokodemo(address="127.0.0.1", port=udp_echo.port, network="udp")],
                         [freedom()])
    with running_instance(config) as instance:
        assert instance.inbounds.get("door").listening == []


def udp_exchange(sock: socket.socket, port: int, payload: bytes) -> bytes:
    sock.sendto(payload, ("127.0.0.1", port))
    data, _ = sock.recvfrom(65536)
    return data


def test_udp_to_a_fixed_destination(udp_echo) -> None:
    config = make_config([dokodemo(address="127.0.0.1", port=udp_echo.port, network="udp")],
                         [freedom()])
    with running_instance(config) as instance:
        port = port_of(instance, "door")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            for size in (1, 100, 2048):
                payload = pattern_bytes(size)
                assert udp_exchange(client, port, payload) == payload
            assert instance.inbounds.get("door").udp_sessions() == 1


def test_a_busy_udp_port_fails_the_start_and_leaves_nothing_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as occupier:
        occupier.bind(("127.0.0.1", 0))
        busy = occupier.getsockname()[1]
        config = make_config([dokodemo(listen_port=busy, address="127.0.0.1", port=9,
                                       network="tcp,udp")], [freedom()])
        before = snapshot()
        instance = Instance(config_from_dict(config))
        with pytest.raises(V2SyncError) as info:
            instance.start()
        instance.close()
        assert str(busy) in str(info.value)
        wait_for_snapshot(before)


def test_udp_on_every_address_answers_an_ipv4_client(udp_echo) -> None:
    """No "listen": the socket is dual-stack "::"; an IPv4 source is answered all the same."""
    door = dokodemo(address="127.0.0.1", port=udp_echo.port, network="udp")
    del door["listen"]
    with running_instance(make_config([door], [freedom()])) as instance:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            assert udp_exchange(client, port_of(instance, "door"), b"dual") == b"dual"


@pytest.mark.parametrize("settings, policy", [
    ({"timeout": 1}, None),                          # the deprecated timeout, at level 0
    ({"userLevel": 1}, {"1": {"connIdle": 1}}),       # the level's connIdle
])
def test_idle_tcp_is_closed_by_timeout_or_level(tcp_echo: TcpEchoServer, settings, policy) -> None:
    config = make_config([dokodemo(address="127.0.0.1", port=tcp_echo.port, **settings)],
                         [freedom()])
    if policy:
        config["policy"] = {"levels": policy}
    with running_instance(config) as instance:
        with socket.create_connection(("127.0.0.1", port_of(instance, "door")),
                                      IO_TIMEOUT) as sock:
            sock.sendall(b"ping")
            assert recv_exact(sock, 4) == b"ping"
            # not at once, and long before the default connIdle (300 s)
            assert 0.5 < closed_within(sock, IO_TIMEOUT) < IO_TIMEOUT
        wait_idle(instance)
