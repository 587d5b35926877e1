"""Mux.cool and threads (issue 17, part 3), through real processes.

- A sub-connection whose client stops reading fills its pipe and blocks the mux
  connection's reading thread, as 4.34 does; its own inactivity timer (connIdle) cuts it and
  the others go on, every byte delivered. (``tools/mux_stall_probe.py`` measures the stall
  against 4.34: README, "Mux.cool".)
- A mux connection that dies ends every sub-connection on it at once.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import List

import pytest
from scenarios.mux_helpers import start_mux_chain
from scenarios.vmess_helpers import IO_TIMEOUT, open_tunnel, recv_exactly
from support.peers import XOR_C, BulkSource, TcpEchoServer, xor_bytes

CONN_IDLE = 2
PINGS = 40
PING_EVERY = 0.1
PING = bytes(range(256)) * 4
END_TIMEOUT = 10.0


def _ended(sock: socket.socket, timeout: float) -> bool:
    """True once the tunnel reads EOF or a reset within ``timeout`` (data read is dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(1 << 20):
                return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
    return False


def test_a_stalled_sub_connection_is_cut_and_the_others_go_on() -> None:
    # v2sync at both ends: its client side stalls on the full pipe, its server side too.
    chain = start_mux_chain("v2sync", "v2sync",
                            policy={"levels": {"0": {"connIdle": CONN_IDLE}}})
    try:
        with TcpEchoServer(xor=XOR_C, timeout=60.0) as echo, \
                BulkSource(1 << 40, timeout=60.0) as source, \
                open_tunnel(chain.socks_port, echo.address) as pinger:
            pinger.sendall(PING)
            assert recv_exactly(pinger, len(PING)) == xor_bytes(PING)
            with open_tunnel(chain.socks_port, source.address) as stalled:
                sender = threading.Thread(target=_send_pings, args=(pinger,), name="pinger")
                sender.start()
                try:
                    received = recv_exactly(pinger, PINGS * len(PING), IO_TIMEOUT)
                finally:
                    sender.join(IO_TIMEOUT)
                assert received == xor_bytes(PING) * PINGS, chain.logs()
                assert _ended(stalled, END_TIMEOUT), "the stalled sub-connection was not cut"
    finally:
        chain.stop()


def _send_pings(sock: socket.socket) -> None:
    for _ in range(PINGS):
        sock.sendall(PING)
        time.sleep(PING_EVERY)


@pytest.mark.parametrize("server", ["v2ray", "v2sync"])
def test_a_dying_mux_connection_ends_every_sub_connection(server: str) -> None:
    chain = start_mux_chain("v2sync", server)
    tunnels: List[socket.socket] = []
    try:
        with TcpEchoServer(xor=XOR_C, timeout=60.0) as echo:
            for _ in range(3):
                tunnel = open_tunnel(chain.socks_port, echo.address)
                tunnels.append(tunnel)
                tunnel.sendall(PING)
                assert recv_exactly(tunnel, len(PING)) == xor_bytes(PING)
            assert len(set(chain.wait_sources(echo.port, 3))) == 1  # one mux connection
            chain.server.stop(check=False)  # its connections die with it
            for index, tunnel in enumerate(tunnels):
                assert _ended(tunnel, END_TIMEOUT), f"sub-connection {index} still open"
    finally:
        for tunnel in tunnels:
            tunnel.close()
        chain.stop()
