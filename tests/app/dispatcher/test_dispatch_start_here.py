"""``dispatch(..., start_here=True)``: an inbound that serves its one connection runs the
outbound's start (routing, the dial, the client's first bytes out) in its own thread, and
the rest goes on in a pooled one. Where that start could wait on the inbound's thread
(sniffing, an outbound that reads the client before it dials) or where the caller serves
more than one connection (UDP, a mux reader), the outbound starts in a pooled thread as
before. No sockets."""
from __future__ import annotations

import threading
from typing import List, Tuple

import pytest
from support.outbounds import OneOutbound

from v2sync.app.dispatcher.default import DefaultDispatcher
from v2sync.app.log.access import AccessLog
from v2sync.app.policy.manager import PolicyManager
from v2sync.app.proxyman.outbound import OutboundHandler
from v2sync.common import task as task_module
from v2sync.common.net import Address, Destination, Network
from v2sync.common.session import Session
from v2sync.common.task import ThreadGroup
from v2sync.infra.conf.builder import config_from_dict
from v2sync.infra.conf.model import SniffingConfig
from v2sync.transport.link import Link

WAIT = 5.0
TCP = Destination(Address.parse("127.0.0.1"), 1)
UDP = Destination(Address.parse("127.0.0.1"), 1, Network.UDP)


class Recorder:
    """A proxy whose steps note the thread of their start and of the rest, handing on
    between the two where a real one's relay does (``HAND_ON``)."""

    def __init__(self, starts_in_caller: bool = True):
        self.starts_in_caller = starts_in_caller
        self.seen: List[Tuple[str, int]] = []
        self.done = threading.Event()

    def process_steps(self, session: Session, link: Link):
        self.seen.append(("start", threading.get_ident()))
        if task_module.started_here():
            yield task_module.HAND_ON
        self.seen.append(("rest", threading.get_ident()))
        self.done.set()


def run(proxy: Recorder, dest: Destination = TCP, start_here: bool = True,
        sniffing: SniffingConfig = None, early: bytes = b"") -> List[str]:
    """Dispatch once; which steps ran in the caller's thread ("here") and which not."""
    raw = {"outbounds": [{"protocol": "freedom"}]}
    threads = ThreadGroup("start-here-test", idle_timeout=WAIT)
    dispatcher = DefaultDispatcher(OneOutbound(OutboundHandler("direct", proxy)),
                                   PolicyManager(config_from_dict(raw).policy), threads,
                                   AccessLog())
    session = Session("t", TCP, sniffing=sniffing)
    try:
        link = dispatcher.dispatch(session, dest, early, start_here=start_here)
        link.writer.close()  # the client is done: a sniffer stops waiting
        assert proxy.done.wait(WAIT)
    finally:
        assert threads.shutdown(WAIT)
    me = threading.get_ident()
    return [f"{step} {'here' if ident == me else 'pooled'}" for step, ident in proxy.seen]


def test_an_inbound_that_serves_its_connection_starts_the_outbound_itself():
    assert run(Recorder()) == ["start here", "rest pooled"]


def test_by_default_the_outbound_starts_in_a_pooled_thread():
    """The mux server's sub-connections, the DNS and UDP dispatchers: their caller reads
    for others too, and must not wait out this one's dial."""
    assert run(Recorder(), start_here=False) == ["start pooled", "rest pooled"]


def test_udp_starts_in_a_pooled_thread():
    assert run(Recorder(), UDP) == ["start pooled", "rest pooled"]


def test_sniffing_starts_in_a_pooled_thread():
    """The sniffer waits for bytes the inbound's thread has yet to read."""
    sniffing = SniffingConfig(enabled=True, dest_override=("http",))
    assert run(Recorder(), sniffing=sniffing, early=b"GET / HTTP/1.1\r\n") == [
        "start pooled", "rest pooled"]


@pytest.mark.parametrize("start_here", [True, False])
def test_an_outbound_that_may_wait_on_the_client_before_its_dial_starts_pooled(start_here):
    """The HTTP outbound reads the client's first bytes before it dials; a mux outbound
    shares its connection: the dispatcher hands on once it has routed."""
    assert run(Recorder(starts_in_caller=False), start_here=start_here) == [
        "start pooled", "rest pooled"]


def test_the_outbounds_that_start_here():
    """Each goes from its dial and its server's handshake to its relay without reading
    the client first (the relay hands on before a first step that would)."""
    from v2sync.proxy.freedom.outbound import FreedomOutbound
    from v2sync.proxy.http.outbound import HttpOutbound
    from v2sync.proxy.shadowsocks.outbound import ShadowsocksOutbound
    from v2sync.proxy.socks.outbound import SocksOutbound
    from v2sync.proxy.trojan.outbound import TrojanOutbound
    from v2sync.proxy.vless.outbound import VlessOutbound
    from v2sync.proxy.vmess.outbound import VMessOutbound
    starting = [FreedomOutbound, ShadowsocksOutbound, SocksOutbound, TrojanOutbound,
                VlessOutbound, VMessOutbound]
    assert all(getattr(cls, "starts_in_caller", False) for cls in starting)
    assert not getattr(HttpOutbound, "starts_in_caller", False)


def test_an_outbound_routed_here_but_started_pooled_goes_first(monkeypatch):
    """Its start is on the connection's path: the caller lets go of the CPU for it, as
    for a spawned outbound (``HAND_AHEAD``)."""
    yields = []
    monkeypatch.setattr(task_module, "_sched_yield", lambda: yields.append(1))
    run(Recorder(starts_in_caller=False))
    assert yields == [1]
