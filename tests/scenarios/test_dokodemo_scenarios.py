"""dokodemo-door end to end: fixed destinations over TCP and UDP, in this process (so
threads, fds and UDP sessions can be counted) and against the real v2ray."""
from __future__ import annotations

import socket
from typing import Any, Dict

from helpers_scenarios import (IO_TIMEOUT, freedom, make_config, port_of, recv_exact,
                               running_instance, wait_idle)
from support.peers import TcpEchoServer, pattern_bytes


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
