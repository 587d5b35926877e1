"""A burst of datagrams from many new sources at once is answered whole.

Each source's first datagram waits in the inbound socket's receive buffer while the sessions
before it are set up (a thread, a dial): ``udp.UDP_RECEIVE_BUFFER``. With the kernel's default
buffer, 256 of 300 came back (4.34: 254-265, measured with the same client).

    SOURCES clients at once -> [dokodemo-door (udp) -> freedom] -> a UDP echo
"""
from __future__ import annotations

import selectors
import socket
import time
from typing import List

from scenarios.helpers_scenarios import (IO_TIMEOUT, freedom, make_config, port_of,
                                         running_instance)
from support.peers import UdpEchoServer

SOURCES = 300
ANSWER_WAIT = 4 * IO_TIMEOUT  # seconds for every answer to come back
ECHO_BUFFER = 8 << 20  # the echo itself must not be the one that drops


def _answered(sockets: List[socket.socket]) -> int:
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        answered = 0
        deadline = time.monotonic() + ANSWER_WAIT
        while answered < len(sockets) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                key.fileobj.recv(2048)  # type: ignore[union-attr]
                selector.unregister(key.fileobj)
                answered += 1
    return answered


def test_a_burst_from_many_new_sources_is_answered_whole() -> None:
    with UdpEchoServer(receive_buffer=ECHO_BUFFER) as echo:
        door = {"tag": "door", "protocol": "dokodemo-door", "listen": "127.0.0.1", "port": 0,
                "settings": {"address": "127.0.0.1", "port": echo.port, "network": "udp"}}
        with running_instance(make_config([door], [freedom()])) as instance:
            target = ("127.0.0.1", port_of(instance, "door"))
            sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SOURCES)]
            try:
                for sock in sockets:
                    sock.sendto(b"one of many", target)
                answered = _answered(sockets)
            finally:
                for sock in sockets:
                    sock.close()
    assert answered == SOURCES
