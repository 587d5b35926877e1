"""``dispatch(session, dest, early)``: the bytes a client sent with its request are in the
link before the outbound's task starts, so its dial finds them ready (no wait for the
inbound's relay to hand them on). No sockets."""
from __future__ import annotations

import threading
from typing import List, Optional

import pytest
from support.outbounds import OneOutbound

from v2sync.app.dispatcher.default import DefaultDispatcher
from v2sync.app.log.access import AccessLog
from v2sync.app.policy.manager import PolicyManager
from v2sync.app.stats.manager import StatsManager
from v2sync.common.mux.encoding import MUX_COOL_ADDRESS, Status, encode_frame
from v2sync.common.mux.server import MuxServer
from v2sync.common.net import Address, Destination
from v2sync.common.session import Session
from v2sync.common.task import ThreadGroup
from v2sync.infra.conf.builder import config_from_dict
from v2sync.transport.link import Link
from v2sync.transport.pipe import ReadTimeout

WAIT = 5.0
HERE = Destination(Address.parse("127.0.0.1"), 1)


class FirstLook:
    """An outbound whose first step records what its link already holds."""
    tag = "direct"

    def __init__(self, wait: float = 0) -> None:
        self.wait = wait  # how long the first read may wait
        self.seen: List[bytes] = []
        self.done = threading.Event()

    def dispatch_steps(self, session: Session, link: Link):
        try:
            self.seen.append(link.reader.read(timeout=self.wait))
        except ReadTimeout:
            self.seen.append(b"")
        self.done.set()
        return
        yield  # steps that never wait


def policy(buffer_kib: int, stats: bool = False) -> PolicyManager:
    raw = {"outbounds": [{"protocol": "freedom"}],
           "policy": {"levels": {"0": {"bufferSize": buffer_kib, "statsUserUplink": stats}}}}
    return PolicyManager(config_from_dict(raw).policy)


def first_look(early: bytes, buffer_kib: int = 512, stats: Optional[StatsManager] = None,
               email: str = "") -> bytes:
    outbound = FirstLook()
    threads = ThreadGroup("early-test")
    dispatcher = DefaultDispatcher(OneOutbound(outbound), policy(buffer_kib, stats is not None),
                                   threads, AccessLog())
    dispatcher.stats = stats
    try:
        dispatcher.dispatch(Session("t", HERE, user_email=email), HERE, early)
        assert outbound.done.wait(WAIT)
    finally:
        assert threads.shutdown(WAIT)
    return outbound.seen[0]


@pytest.mark.parametrize("buffer_kib", [512, 0], ids=["default", "bufferSize-0"])
def test_the_outbound_finds_the_early_bytes_at_its_start(buffer_kib: int) -> None:
    """Whatever the pipe's limit: a fresh pipe takes one write (bufferSize 0 included)."""
    early = b"GET / HTTP/1.1\r\n\r\n" * 200  # 3.6 KiB, above bufferSize 0's limit
    assert first_look(early, buffer_kib) == early


def test_no_early_bytes_leave_the_link_empty() -> None:
    assert first_look(b"") == b""


def test_the_early_bytes_count_as_the_users_uplink() -> None:
    stats = StatsManager()
    first_look(b"x" * 100, stats=stats, email="a@b")
    counter = stats.get("user>>>a@b>>>traffic>>>uplink")
    assert counter is not None and counter.value() == 100


def test_the_mux_server_passes_them_on_to_an_ordinary_destination() -> None:
    outbound = FirstLook()
    threads = ThreadGroup("early-test")
    dispatcher = DefaultDispatcher(OneOutbound(outbound), policy(512), threads, AccessLog())
    mux = MuxServer(dispatcher, dispatcher.policy, threads)
    try:
        mux.dispatch(Session("t", HERE), HERE, b"first bytes")
        assert outbound.done.wait(WAIT)
    finally:
        assert threads.shutdown(WAIT)
    assert outbound.seen == [b"first bytes"]


def test_a_mux_connection_gets_its_first_frames_before_its_worker_starts() -> None:
    """``v1.mux.cool``: the frames that came with the request are the worker's first read;
    here a New frame with data, which the worker dispatches as a sub-connection."""
    outbound = FirstLook(wait=WAIT)
    threads = ThreadGroup("early-test")
    dispatcher = DefaultDispatcher(OneOutbound(outbound), policy(512), threads, AccessLog())
    mux = MuxServer(dispatcher, dispatcher.policy, threads)
    frame = encode_frame(1, Status.NEW, b"sub data", target=Destination.tcp("127.0.0.1", 1))
    link = mux.dispatch(Session("t", HERE), Destination(MUX_COOL_ADDRESS, 9527), frame)
    try:
        assert outbound.done.wait(WAIT)
    finally:
        link.interrupt()
        dispatcher.interrupt_all()  # the sub-connection's link too: its answer never comes
        assert threads.shutdown(WAIT)
    assert outbound.seen == [b"sub data"]
