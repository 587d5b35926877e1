"""A fallback delivers the last bytes of each direction to a slow peer, as 4.34's does.

Its client and target halves are relayed on a link, each with its own activity timer; a
half whose reader ended started its last timeout (uplinkOnly, downlinkOnly) at once, and
that timeout's abort dropped what the link still held for the other, slower peer: the tail
of a download to a client that paused reading, or of an upload the target read late
(found by a review: up to 141 KB a connection; 4.34 starts the timeout once the last byte
is written). The tail is in the link when a transfer just overflows the kernel's send
buffer towards the slow peer, so each test first measures that buffer's ceiling on this
machine, then moves a few sizes just past it at once. Real sockets: an in-process Instance
with a Trojan inbound whose fallback is a local server.
"""
from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

from scenarios.helpers_scenarios import make_config, port_of, running_instance, wait_idle
from support.peers import _TcpServer

ONE_SIDE_LEFT = 1  # uplinkOnly and downlinkOnly, seconds (whole, as configs take them)
PAUSE = 1.6  # the slow peer's pause: past ONE_SIDE_LEFT
SMALL_BUFFER = 65536  # the slow peer's receive buffer
PAST_CEILING = [10_000 * k for k in range(1, 7)]  # the link holds 64 KiB
IO_TIMEOUT = 15.0
MAX_READS = 100_000
PROBE_SECONDS = 0.5
BLOCK = b"x" * 65536


def config(fallback_port: int) -> Dict[str, Any]:
    inbound = {"tag": "trojan-in", "protocol": "trojan", "listen": "127.0.0.1", "port": 0,
               "settings": {"clients": [{"password": "secret"}],
                            "fallbacks": [{"dest": fallback_port}]}}
    section = make_config([inbound])
    section["policy"] = {"levels": {"0": {"uplinkOnly": ONE_SIDE_LEFT,
                                          "downlinkOnly": ONE_SIDE_LEFT}}}
    return section


def send_ceiling() -> int:
    """What a loopback sender gets into the kernel for a receiver that reads nothing and
    has SMALL_BUFFER (the send buffer grows to its ceiling meanwhile)."""
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        receiver.connect(listener.getsockname())
        sender, _ = listener.accept()
        with sender:
            sender.setblocking(False)
            total, deadline = 0, time.monotonic() + PROBE_SECONDS
            while time.monotonic() < deadline:
                try:
                    total += sender.send(BLOCK)
                except BlockingIOError:
                    time.sleep(0.01)
    return total


def slow_read(sock: socket.socket) -> int:
    """PAUSE, then every byte until the end."""
    time.sleep(PAUSE)
    got = 0
    for _ in range(MAX_READS):
        data = sock.recv(1 << 20)
        if not data:
            break
        got += len(data)
    return got


def send_all(sock: socket.socket, size: int) -> None:
    view = memoryview(BLOCK * (size // len(BLOCK) + 1))[:size]
    sock.sendall(view)


class Sizes(_TcpServer):
    """A web server of sorts: ``GET /<n>`` is answered with n bytes, then its end."""

    def __init__(self) -> None:
        super().__init__("sizes", "127.0.0.1", 16, IO_TIMEOUT)

    def handle(self, conn: socket.socket) -> None:
        size = int(conn.recv(65536).split(b" ")[1][1:])
        send_all(conn, size)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the client's end (or the relay's)


def download(port: int, size: int) -> int:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.settimeout(IO_TIMEOUT)
    with sock:
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)  # not Trojan
        return slow_read(sock)


def test_a_download_reaches_a_client_that_paused_reading() -> None:
    sizes = [send_ceiling() + extra for extra in PAST_CEILING]
    with Sizes() as server, running_instance(config(server.port)) as instance:
        port = port_of(instance, "trojan-in")
        with ThreadPoolExecutor(len(sizes)) as pool:
            got = list(pool.map(lambda size: download(port, size), sizes))
        wait_idle(instance)
    assert got == sizes


class LateReader(_TcpServer):
    """Counts what each client uploads, after a PAUSE. Its small receive buffer is set
    before the connections are made."""

    def __init__(self) -> None:
        super().__init__("late-reader", "127.0.0.1", 16, IO_TIMEOUT)
        self.counts: List[int] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        super().start()
        assert self._listener is not None  # accepted sockets take its buffer size
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)

    def handle(self, conn: socket.socket) -> None:
        try:
            count = slow_read(conn)
        except OSError:  # a reset: the relay cut the upload
            count = -1
        with self.lock:
            self.counts.append(count)


def upload(port: int, size: int) -> None:
    with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as sock:
        send_all(sock, size)  # "xxxx...": not Trojan, to the fallback
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the relay's end


def test_a_half_closed_upload_reaches_a_target_that_reads_late() -> None:
    sizes = [send_ceiling() + extra for extra in PAST_CEILING]
    with LateReader() as target, running_instance(config(target.port)) as instance:
        port = port_of(instance, "trojan-in")
        with ThreadPoolExecutor(len(sizes)) as pool:
            list(pool.map(lambda size: upload(port, size), sizes))
        wait_idle(instance)
        deadline = time.monotonic() + IO_TIMEOUT
        while len(target.counts) < len(sizes) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sorted(target.counts) == sorted(sizes)
