"""Downloads whose client never reads: v2sync holds a bounded number of bytes per connection.

SOCKS5 inbound -> freedom, in this process; an origin here sends as fast as the path lets it,
counting every byte its ``send`` calls accepted. Once every send is blocked, each byte the
origin sent is in one of five places: the origin's send queue, v2sync's receive queue on the
upstream leg, v2sync's own memory, v2sync's send queue on the client leg, or the client's
receive queue. The kernel reports the four queues of every loopback socket in
``/proc/net/tcp`` (tx_queue, rx_queue), so what v2sync holds is what is left. Per connection
that is at most the pipe (its limit, plus at most one PIPE_READ_FLOOR read) and what the
client-side writer took from it and is stuck sending: no timing is asserted, only that
accounting.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from helpers_scenarios import (freedom, make_config, port_of, running_instance, socks5_tunnel,
                               socks_inbound, wait_idle)
from v2sync.transport.copy import PIPE_READ_FLOOR

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="needs Linux /proc/net/tcp")

KIB = 1024
MIB = 1024 * KIB
DOWNLOADS = 8
DEFAULT_BUFFER = 512 * KIB  # policy.go's defaultBufferSize (amd64)
SEND_BLOCK = memoryview(bytes(i % 251 for i in range(256 * KIB)))
MAX_PER_DOWNLOAD = 256 * MIB  # each origin loop stops here at the latest
SOCKET_TIMEOUT = 30.0
SETTLE_QUIET_SECONDS = 1.0
SETTLE_DEADLINE = 60.0
POLL_SECONDS = 0.05
LOOPBACK_HEX = "0100007F"


class CountingOrigin:
    """Accepts connections and sends to each until it fails or MAX_PER_DOWNLOAD is out."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(SOCKET_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.peer_ports: Set[int] = set()
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []

    def serve(self, count: int) -> None:
        acceptor = threading.Thread(target=self._accept, args=(count,), name="origin-accept")
        acceptor.start()
        self._threads.append(acceptor)

    def _accept(self, count: int) -> None:
        for _ in range(count):
            sock, peer = self.listener.accept()
            sock.settimeout(SOCKET_TIMEOUT)
            self.peer_ports.add(peer[1])
            sender = threading.Thread(target=self._send, args=(sock,), name="origin-send")
            sender.start()
            self._threads.append(sender)

    def _send(self, sock: socket.socket) -> None:
        with sock:
            total = 0
            while total < MAX_PER_DOWNLOAD:
                try:
                    n = sock.send(SEND_BLOCK)
                except OSError:  # v2sync closed the leg: the test is over
                    return
                total += n
                with self._lock:
                    self.sent += n

    def close(self, timeout: float) -> None:
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout)


@dataclass(frozen=True)
class Queues:
    """Bytes in the kernel's queues: (tx, rx) of each loopback socket, by (local, remote) port."""

    by_ports: Dict[Tuple[int, int], Tuple[int, int]]

    @classmethod
    def snapshot(cls) -> "Queues":
        by_ports = {}
        with open("/proc/net/tcp") as table:
            next(table)
            for line in table:
                fields = line.split()
                local, remote, queues = fields[1], fields[2], fields[4]
                if not (local.startswith(LOOPBACK_HEX) and remote.startswith(LOOPBACK_HEX)):
                    continue
                tx, rx = (int(part, 16) for part in queues.split(":"))
                by_ports[(int(local[-4:], 16), int(remote[-4:], 16))] = (tx, rx)
        return cls(by_ports)

    def tx(self, local: int, remote: int) -> int:
        return self.by_ports[(local, remote)][0]

    def rx(self, local: int, remote: int) -> int:
        return self.by_ports[(local, remote)][1]


def wait_until_sends_block(origin: CountingOrigin) -> None:
    """Wait (bounded) until the origin's count stops moving: every send is blocked."""
    deadline = time.monotonic() + SETTLE_DEADLINE
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        sent = origin.sent
        if sent != last:
            last, quiet_since = sent, time.monotonic()
        elif time.monotonic() - quiet_since >= SETTLE_QUIET_SECONDS:
            return
    raise AssertionError(f"the origin was still sending after {SETTLE_DEADLINE} s")


def held_by_proxy(origin: CountingOrigin, proxy_port: int, client_ports: List[int]) -> int:
    """Bytes the origin sent that sit in no kernel queue: the proxy holds them."""
    queues = Queues.snapshot()
    in_kernel = 0
    for port in origin.peer_ports:  # the upstream legs: origin -> v2sync
        in_kernel += queues.tx(origin.port, port) + queues.rx(port, origin.port)
    for port in client_ports:  # the client legs: v2sync -> client
        in_kernel += queues.tx(proxy_port, port) + queues.rx(port, proxy_port)
    return origin.sent - in_kernel


@contextlib.contextmanager
def stalled_downloads(proxy_port: int, origin: CountingOrigin,
                      count: int) -> Iterator[List[int]]:
    """``count`` SOCKS5 downloads from the origin that are never read; yields client ports."""
    origin.serve(count)
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socks5_tunnel(proxy_port, "127.0.0.1", origin.port))
                 for _ in range(count)]
        yield [sock.getsockname()[1] for sock in socks]


@pytest.mark.parametrize("buffer_kib", [None, 64])
def test_stalled_downloads_hold_at_most_a_pipe_and_a_chunk_each(buffer_kib) -> None:
    config = make_config([socks_inbound()], [freedom()])
    limit = DEFAULT_BUFFER
    if buffer_kib is not None:
        config["policy"] = {"levels": {"0": {"bufferSize": buffer_kib}}}
        limit = buffer_kib * KIB
    # the pipe (limit + one floor read) and what the writer took from it
    per_download = 2 * (limit + PIPE_READ_FLOOR)
    origin = CountingOrigin()
    try:
        with running_instance(config) as instance:
            proxy_port = port_of(instance, "socks-in")
            with stalled_downloads(proxy_port, origin, DOWNLOADS) as client_ports:
                wait_until_sends_block(origin)
                held = held_by_proxy(origin, proxy_port, client_ports)
                assert len(origin.peer_ports) == DOWNLOADS
                assert origin.sent > DOWNLOADS * limit  # the downloads did fill the path
                assert held <= DOWNLOADS * per_download, (
                    f"v2sync holds {held / MIB:.1f} MiB for {DOWNLOADS} stalled downloads, "
                    f"more than {DOWNLOADS} x {per_download / KIB:.0f} KiB")
            wait_idle(instance)
    finally:
        origin.close(SOCKET_TIMEOUT)
