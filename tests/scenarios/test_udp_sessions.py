"""UDP sessions through SOCKS UDP ASSOCIATE (issue 16, part 4): a (client, target) link per
pair, gone after 4 s without datagrams (4.34 udp/dispatcher.go; shortened here), and a
dual-stack listener ("listen" unset) that answers IPv4 clients."""
from __future__ import annotations

import time

import pytest
from scenarios.helpers_scenarios import (IO_TIMEOUT, freedom, make_config, port_of,
                                         running_instance, socks_inbound, wait_idle)
from scenarios.routing_helpers import udp_round_trip
from support.peers import UdpEchoServer

from v2sync.app.dispatcher import udp as udp_table

SHORT_IDLE = 0.5


def test_socks_udp_on_every_address_answers_an_ipv4_client(udp_echo: UdpEchoServer) -> None:
    inbound = socks_inbound(udp=True)
    del inbound["listen"]  # "::", dual-stack
    with running_instance(make_config([inbound], [freedom()])) as instance:
        port = port_of(instance, "socks-in")
        assert udp_round_trip(port, udp_echo, b"dual", IO_TIMEOUT) == b"dual"


def test_a_silent_udp_link_is_closed(udp_echo: UdpEchoServer,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udp_table, "UDP_SESSION_IDLE", SHORT_IDLE)
    config = make_config([socks_inbound(udp=True, ip="127.0.0.1")], [freedom()])
    with running_instance(config) as instance:
        port = port_of(instance, "socks-in")
        assert udp_round_trip(port, udp_echo, b"one", IO_TIMEOUT) == b"one"
        started = time.monotonic()
        wait_idle(instance)  # the link, its outbound and its reader thread are gone
        assert time.monotonic() - started < SHORT_IDLE + 5
        assert udp_round_trip(port, udp_echo, b"two", IO_TIMEOUT) == b"two"  # a new one


def test_a_pair_past_the_cap_closes_the_quietest(udp_echo: UdpEchoServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The SOCKS relay takes datagrams from anyone (as 4.34's), so one sender to many
    targets filled the table and every new client went unanswered (found by a review;
    4.34 has no cap). Past the cap, a new pair closes the one quiet longest."""
    monkeypatch.setattr(udp_table, "MAX_UDP_SESSIONS", 2)
    config = make_config([socks_inbound(udp=True, ip="127.0.0.1")], [freedom()])
    with running_instance(config) as instance:
        port = port_of(instance, "socks-in")
        for payload in (b"one", b"two", b"three", b"four"):  # each from a new source port
            assert udp_round_trip(port, udp_echo, payload, IO_TIMEOUT) == payload
