"""The UDP inbound worker on loopback: sessions per source, idle close, the source cap,
the per-source queue, oversized and empty datagrams, shutdown. The proxy here is a small
real implementation of the worker's ``process_steps`` contract (it answers each datagram with
``b"re:" + datagram``), not a stand-in for a socket."""
from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Iterator, List

import pytest

from v2sync.app.proxyman import udp_worker
from v2sync.app.proxyman.udp_worker import UdpWorker
from v2sync.common.net import Address, Destination, Network
from v2sync.common.task import ThreadGroup
from v2sync.transport.internet import tproxy

from support.resources import wait_for

IO_TIMEOUT = 3.0
JOIN_TIMEOUT = 5.0


class AnsweringProxy:
    """Reads datagrams until the connection ends; ``gate`` holds the reading back."""

    def __init__(self) -> None:
        self.sessions: List[object] = []
        self.ended = 0
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def process_steps(self, session, conn, dispatcher):
        with self._lock:
            self.sessions.append(session)
        self.gate.wait(IO_TIMEOUT)
        while True:
            datagrams = yield from conn.read_steps()
            if datagrams is None:
                break
            for datagram in datagrams:
                conn.write(b"re:" + datagram)
        with self._lock:
            self.ended += 1


@pytest.fixture
def parts() -> Iterator[tuple]:
    proxy = AnsweringProxy()
    workers, listeners = ThreadGroup("w"), ThreadGroup("l")
    worker = UdpWorker(proxy, None, workers, Address.parse("127.0.0.1"), 0, "door")
    worker.start(listeners)
    try:
        yield worker, proxy
    finally:
        worker.close()
        assert listeners.shutdown(JOIN_TIMEOUT) and workers.shutdown(JOIN_TIMEOUT)


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(IO_TIMEOUT)
    return sock


def test_one_session_per_source_answers_go_to_their_source(parts) -> None:
    worker, proxy = parts
    clients = [client() for _ in range(3)]
    try:
        for round_ in range(3):
            for i, sock in enumerate(clients):
                sock.sendto(b"%d-%d" % (i, round_), ("127.0.0.1", worker.port))
            for i, sock in enumerate(clients):
                data, sender = sock.recvfrom(4096)
                assert data == b"re:%d-%d" % (i, round_)
                assert sender == ("127.0.0.1", worker.port)
        assert worker.session_count() == 3 and len(proxy.sessions) == 3
        sources = {s.source for s in proxy.sessions}
        assert sources == {Destination(Address.parse("127.0.0.1"), c.getsockname()[1],
                                       Network.UDP) for c in clients}
    finally:
        for sock in clients:
            sock.close()


def test_idle_sessions_close_and_a_new_datagram_opens_a_new_one(parts, monkeypatch) -> None:
    monkeypatch.setattr(udp_worker, "SESSION_IDLE", 0.3)
    monkeypatch.setattr(udp_worker, "CLEAN_INTERVAL", 0.1)
    worker, proxy = parts
    with client() as sock:
        sock.sendto(b"a", ("127.0.0.1", worker.port))
        assert sock.recv(100) == b"re:a"
        wait_for(lambda: worker.session_count() == 0 and proxy.ended == 1, IO_TIMEOUT)
        sock.sendto(b"b", ("127.0.0.1", worker.port))
        assert sock.recv(100) == b"re:b"
        assert len(proxy.sessions) == 2


def test_a_source_past_the_cap_closes_the_quietest(parts, monkeypatch) -> None:
    """A flood of sources (forged addresses cost nothing) must not lock a new client out:
    past the cap, the connection quiet longest is closed to make room."""
    monkeypatch.setattr(udp_worker, "MAX_SOURCES", 2)
    worker, proxy = parts
    clients = [client() for _ in range(3)]
    try:
        for sock in clients[:2]:
            sock.sendto(b"x", ("127.0.0.1", worker.port))
            assert sock.recv(100) == b"re:x"
        clients[1].sendto(b"y", ("127.0.0.1", worker.port))  # the first is now the quietest
        assert clients[1].recv(100) == b"re:y"
        clients[2].sendto(b"z", ("127.0.0.1", worker.port))
        assert clients[2].recv(100) == b"re:z"
        wait_for(lambda: proxy.ended == 1, IO_TIMEOUT)  # the first source's connection
        assert worker.session_count() == 2
        clients[1].sendto(b"w", ("127.0.0.1", worker.port))  # still served as it was
        assert clients[1].recv(100) == b"re:w" and len(proxy.sessions) == 3
    finally:
        for sock in clients:
            sock.close()


def test_a_full_queue_drops_rather_than_waits(parts) -> None:
    worker, proxy = parts
    proxy.gate.clear()  # the proxy reads nothing yet
    datagram = b"q" * 1000
    with client() as sock:
        for _ in range(40):
            sock.sendto(datagram, ("127.0.0.1", worker.port))
        time.sleep(0.3)
        proxy.gate.set()
        answers = 0
        sock.settimeout(0.5)
        try:
            while True:
                sock.recv(4096)
                answers += 1
        except socket.timeout:
            pass
    # the queue takes 16 KiB (and the datagram that crosses it), the rest was dropped
    assert 16 <= answers <= 17


def test_a_queue_past_half_full_yields_the_cpu_to_its_reader(parts, monkeypatch) -> None:
    """Every thread shares one CPU: the worker gives its reader a turn once a source's queue
    is half full, rather than filling it and dropping the rest of a burst."""
    worker, proxy = parts
    yields: List[int] = []
    monkeypatch.setattr(udp_worker, "yield_cpu", lambda: yields.append(1))
    proxy.gate.clear()  # the proxy reads nothing yet: the queue only grows
    with client() as sock:
        for _ in range(12):
            sock.sendto(b"q" * 1000, ("127.0.0.1", worker.port))
        wait_for(lambda: len(yields) >= 4, IO_TIMEOUT)
        proxy.gate.set()
    assert len(yields) == 12 - udp_worker.SOURCE_QUEUE_BYTES // 2 // 1000  # past 8 KiB only


def test_empty_and_oversized_datagrams_are_not_delivered(parts) -> None:
    worker, proxy = parts
    with client() as sock:
        sock.sendto(b"", ("127.0.0.1", worker.port))
        sock.sendto(b"z" * 2049, ("127.0.0.1", worker.port))
        sock.sendto(b"k" * 2048, ("127.0.0.1", worker.port))  # in, but its answer is 2,051
        sock.sendto(b"m" * 2045, ("127.0.0.1", worker.port))
        assert sock.recv(65536) == b"re:" + b"m" * 2045  # the first answer to arrive
    assert len(proxy.sessions) == 1


def test_close_ends_every_session(parts) -> None:
    worker, proxy = parts
    with client() as sock:
        sock.sendto(b"a", ("127.0.0.1", worker.port))
        assert sock.recv(100) == b"re:a"
    worker.close()
    wait_for(lambda: proxy.ended == 1, IO_TIMEOUT)


def test_original_destination_from_ancillary_data() -> None:
    sockaddr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 53) \
        + socket.inet_aton("203.0.113.9") + b"\x00" * 8
    found = tproxy.original_destination_of_datagram(
        [(socket.SOL_IP, tproxy.IP_RECVORIGDSTADDR, sockaddr)])
    assert found == Destination(Address.parse("203.0.113.9"), 53, Network.UDP)
    sockaddr6 = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 443) + b"\x00" * 4 \
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + b"\x00" * 4
    found6 = tproxy.original_destination_of_datagram(
        [(tproxy.SOL_IPV6, tproxy.IPV6_RECVORIGDSTADDR, sockaddr6)])
    assert found6 == Destination(Address.parse("2001:db8::1"), 443, Network.UDP)
    assert tproxy.original_destination_of_datagram([(socket.SOL_IP, 99, sockaddr)]) is None
    assert tproxy.original_destination_of_datagram(
        [(socket.SOL_IP, tproxy.IP_RECVORIGDSTADDR, b"\x02\x00")]) is None
