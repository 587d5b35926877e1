"""A held, idle connection keeps no thread, nor does one lingering after its client left. The directions that write from a pipe park
while the pipe is empty (proxy/relay.py, transport/copy.py PipeDrain), the socket readers
park in the ReadWaiter once idle (transport/internet/readiness.py), and all wake for the
next bytes. Real sockets: PySocks through a SOCKS5 inbound to
freedom and an echo origin."""
from __future__ import annotations

import socket
import time

import socks

from scenarios.helpers_scenarios import (freedom, make_config, port_of, recv_exact,
                                         running_instance, socks_inbound, wait_idle)
from support.peers import TcpEchoServer
from v2sync.transport import copy as copy_module

HELD = 20
WAIT = 5.0


def _threads_in_use(instance) -> int:
    workers = instance.workers
    return len(workers._threads) - len(workers._idle)


def _connect(proxy_port: int, echo: TcpEchoServer) -> socks.socksocket:
    sock = socks.socksocket()
    sock.set_proxy(socks.SOCKS5, "127.0.0.1", proxy_port)
    sock.settimeout(WAIT)
    sock.connect(echo.address)
    return sock


def _echo(sock: socks.socksocket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return recv_exact(sock, len(payload))


def test_held_idle_connections_keep_no_thread_and_wake_for_more():
    config = make_config([socks_inbound()], [freedom()])
    with TcpEchoServer(max_connections=HELD + 8, timeout=30) as echo, \
            running_instance(config) as instance:
        port = port_of(instance, "socks-in")
        held = []
        try:
            for i in range(HELD):
                held.append(_connect(port, echo))
                assert _echo(held[-1], b"hello %d" % i) == b"hello %d" % i
            time.sleep(copy_module.PARK_AFTER * 4)  # every idle drain has parked by now
            deadline = time.monotonic() + WAIT
            while _threads_in_use(instance) > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            # The handshake selector's waiting thread alone.
            assert _threads_in_use(instance) <= 1
            assert instance.readiness.waiting() == 2 * HELD
            for i, sock in enumerate(held):  # each parked direction wakes for its answer
                assert _echo(sock, b"again %d" % i * 100) == b"again %d" % i * 100
        finally:
            for sock in held:
                sock.close()
        wait_idle(instance)


LINGER = 4  # seconds of downlinkOnly: long enough to look, short enough to wait out
SETTLE = 1.5  # enough for every reader to park (PARK_AFTER), well within LINGER


def test_connections_lingering_after_their_clients_left_keep_no_thread():
    # The client closes; as in 4.34, freedom does not half-close the upstream, so the origin
    # keeps its end open and each connection lingers for downlinkOnly. Its client side has
    # ended: the relay's join waits for the other direction without a thread, and the
    # upstream reader parks.
    config = make_config([socks_inbound()], [freedom()])
    config["policy"] = {"levels": {"0": {"downlinkOnly": LINGER}}}
    with TcpEchoServer(max_connections=HELD + 8, timeout=30) as echo, \
            running_instance(config) as instance:
        port = port_of(instance, "socks-in")
        for i in range(HELD):
            with _connect(port, echo) as sock:
                assert _echo(sock, b"bye %d" % i) == b"bye %d" % i
        deadline = time.monotonic() + SETTLE
        while _threads_in_use(instance) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _threads_in_use(instance) <= 1  # the handshake selector's waiting thread
        assert instance.readiness.waiting() == HELD  # every upstream reader, parked
        assert len(instance.workers.live()) >= HELD  # the relays still linger, threadless
        wait_idle(instance, LINGER + WAIT)  # then downlinkOnly ends every one of them


def test_held_idle_fallback_connections_keep_no_thread_and_wake_for_more():
    """A fallback is relayed as a dispatched connection is: the client and the target
    each with a reader that parks. It relayed the two sockets directly, two threads per
    idle connection, on the path anyone can reach without a password (500 idle ones,
    +1,000 threads; 4.34: +2; found by a review)."""
    with TcpEchoServer(max_connections=HELD + 8, timeout=30) as echo:
        inbound = {"tag": "trojan-in", "protocol": "trojan", "listen": "127.0.0.1", "port": 0,
                   "settings": {"clients": [{"password": "secret"}],
                                "fallbacks": [{"dest": echo.port}]}}
        with running_instance(make_config([inbound], [freedom()])) as instance:
            port = port_of(instance, "trojan-in")
            held = []
            try:
                for i in range(HELD):  # no Trojan header: each goes to the echo fallback
                    held.append(socket.create_connection(("127.0.0.1", port), WAIT))
                    assert _echo(held[-1], b"GET /%d HTTP/1.1\r\n\r\n" % i) == (
                        b"GET /%d HTTP/1.1\r\n\r\n" % i)
                time.sleep(copy_module.PARK_AFTER * 4)
                deadline = time.monotonic() + WAIT
                while _threads_in_use(instance) > 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert _threads_in_use(instance) <= 1
                assert instance.readiness.waiting() == 2 * HELD
                for i, sock in enumerate(held):
                    assert _echo(sock, b"again %d" % i * 100) == b"again %d" % i * 100
            finally:
                for sock in held:
                    sock.close()
            wait_idle(instance)
