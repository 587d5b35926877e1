"""``ChainDialer`` (proxySettings) with a stand-in carrier that echoes its link: what the
outbound gets is a working socket, a stream or datagrams kept whole, and the carrier ends
when the outbound lets go. Sockets are local socketpairs; no network."""
from __future__ import annotations

import logging
import socket
import threading
from contextlib import contextmanager
from typing import Iterator, List

import pytest
from support.outbounds import OneOutbound

from v2sync.app.policy.manager import PolicyManager
from v2sync.app.proxyman.chain import ChainDialer
from v2sync.common.errors import TransportError
from v2sync.common.net import Address, Destination, Network
from v2sync.common.session import Session
from v2sync.common.signal import TimerWheel
from v2sync.common.task import ThreadGroup
from v2sync.features.proxy import ProxyContext
from v2sync.infra.conf.model import PolicyConfig
from v2sync.transport.internet.conn import Connection
from v2sync.transport.link import Link
from v2sync.transport.pipe import EOF

WAIT = 5.0
TARGET = Destination(Address.parse("example.com"), 443)


class EchoCarrier:
    """An outbound that sends back each chunk of its link, and records its sessions;
    given the chunk after ``fail_after`` answers, it fails as an outbound does (its answers
    interrupted)."""
    tag = "via"

    def __init__(self, fail_after: int = -1) -> None:
        self.sessions: List[Session] = []
        self.ended = threading.Event()
        self.fail_after = fail_after

    def dispatch_steps(self, session: Session, link: Link):
        self.sessions.append(session)
        answered = 0
        while True:
            chunk = link.reader.read(timeout=WAIT)
            if chunk is EOF:
                link.writer.close()
                break
            if answered == self.fail_after:
                link.writer.interrupt()  # as run_proxy_steps does when the proxy fails
                break
            link.writer.write(chunk)
            answered += 1
        self.ended.set()
        return
        yield  # steps that never wait


@contextmanager
def dialer(tag: str = "via", fail_after: int = -1) -> Iterator[tuple]:
    timers = TimerWheel()
    timers.start()
    threads = ThreadGroup("chain-test")
    carrier = EchoCarrier(fail_after)
    ctx = ProxyContext(PolicyManager(PolicyConfig()), timers, threads)
    try:
        yield ChainDialer(tag, "main", OneOutbound(carrier), ctx), carrier
    finally:
        assert threads.shutdown(WAIT)
        timers.stop()


@contextmanager
def dialled(chain: ChainDialer) -> Iterator[Connection]:
    """``chain.dial(TARGET)``, its socket's waits bounded, closed at the end."""
    conn = chain.dial(TARGET)
    assert conn is not None
    try:
        conn.sock.settimeout(WAIT)
        yield conn
    finally:
        conn.close()


def test_a_stream_reaches_the_carrier_with_the_target_unresolved() -> None:
    with dialer() as (chain, carrier):
        with dialled(chain) as conn:
            conn.sock.sendall(b"hello")
            assert conn.sock.recv(16) == b"hello"
        assert carrier.ended.wait(WAIT)  # the outbound let go: the carrier's link ended
    assert [s.target for s in carrier.sessions] == [TARGET]  # a name, as written


def test_datagrams_stay_whole_and_go_to_the_chains_destination() -> None:
    with dialer() as (chain, carrier):
        sock = chain.datagrams(TARGET)
        assert sock is not None
        try:
            sock.sendto(b"one", ("192.0.2.1", 53))  # the address is not the chain's business
            sock.send(b"two")
            assert sock.recv(100) == b"one" and sock.recv(100) == b"two"
        finally:
            sock.close()
        assert carrier.ended.wait(WAIT)
    target = carrier.sessions[0].target
    assert target is not None and target.network is Network.UDP
    assert (target.address, target.port) == (TARGET.address, TARGET.port)


@pytest.mark.parametrize("kind", ["dial", "datagrams"])
def test_a_tag_no_outbound_has_is_a_warning_and_none(kind: str, caplog) -> None:
    with caplog.at_level(logging.WARNING), dialer(tag="nobody") as (chain, carrier):
        assert getattr(chain, kind)(TARGET) is None
    assert "failed to get outbound handler with tag: nobody" in caplog.text
    assert carrier.sessions == []


def test_the_carried_socket_is_a_socketpair_end() -> None:
    """So TLS, parked readers and the protocol code work on it as on any socket."""
    with dialer() as (chain, _carrier), dialled(chain) as conn:
        assert conn.sock.family == socket.AF_UNIX


def test_a_carrier_that_fails_is_a_reset_not_an_end_of_stream() -> None:
    """As 4.34's pipe connection returns an error: the outbound's relay ends at once."""
    with dialer(fail_after=1) as (chain, carrier), dialled(chain) as conn:
        conn.write(b"one")
        assert conn.read(16) == b"one"
        conn.write(b"two")  # the carrier fails instead of answering
        assert carrier.ended.wait(WAIT)
        with pytest.raises(TransportError, match="carrying outbound failed"):
            conn.read(16)


def test_a_carrier_that_closes_is_an_end_of_stream() -> None:
    with dialer() as (chain, _carrier), dialled(chain) as conn:
        conn.write(b"one")
        assert conn.read(16) == b"one"
        conn.shutdown_write()  # the carrier sees the end and closes its answers
        assert conn.read(16) == b""


def test_datagrams_end_with_an_error_a_reader_stops_at() -> None:
    """A UDP socket has no end of stream: the outbounds' readers stop at OSError, and an
    empty read would have them spin."""
    with dialer(fail_after=1) as (chain, carrier):
        sock = chain.datagrams(TARGET)
        assert sock is not None
        try:
            sock.send(b"one")
            assert sock.recv(100) == b"one"
            sock.send(b"two")
            assert carrier.ended.wait(WAIT)
            with pytest.raises(OSError):
                sock.recv(100)
        finally:
            sock.close()
