"""A quiet UDP session or mux sub-connection keeps no thread, and wakes for the next
datagram or bytes either way.

Each direction parks while it waits: freedom's UDP socket reader in the ReadWaiter
(``transport.internet.udp.recv_or_park``), every pipe reader on its pipe
(``transport.copy.read_all_steps``, ``PipeDrain``): the UDP worker's sources, the SOCKS UDP
table's answer pumps, the mux sub-connections' pumps on both sides, the SOCKS UDP control
connection, a VLESS or Trojan connection's framed-datagram reader. Before, each held 1-4 threads: 1,000 mux UDP sub-connections made 3,006
threads (4.34: 8), and 200 dokodemo-door sources 800. Real sockets: dokodemo-door and
SOCKS5 UDP (PySocks) to freedom in this process, and a real v2ray 4.34 on the other end of
a Mux.cool connection in both directions and as the VLESS and Trojan client.
"""
from __future__ import annotations

import contextlib
import socket
import time
from typing import Any, Callable, Dict, Iterator, List

import dns.message
import pytest
import socks

from scenarios.helpers_scenarios import (freedom, make_config, port_of, recv_exact,
                                         running_instance, socks_inbound, wait_idle)
from scenarios import keyed_helpers as keyed
from scenarios import ss_helpers as ss
from scenarios.mux_helpers import start_mux_chain
from scenarios.vmess_helpers import make_process
from scenarios.test_dokodemo_scenarios import dokodemo
from support.dnsmasq import Dnsmasq, require_dnsmasq
from support.peers import TcpEchoServer, UdpEchoServer, free_port
from support.resources import process_thread_count
from v2sync.proxy.dns import outbound as dns_outbound
from v2sync.transport import copy as copy_module

HELD = 12
WAIT = 5.0
# A v2sync process's pooled threads that outlive their work: idle ones leave after
# ``common.task.IDLE_TIMEOUT`` (2 s), surplus ones within 3 s; the rest stay as a pool.
SETTLE = 6.0
POOL_SLACK = 8
# In this process only busy threads count (``_threads_in_use``): they are back within this,
# well before a quiet session's own end (the SOCKS table's 4 s, the door's 8 s).
SETTLE_BUSY = 1.5


def _threads_in_use(instance) -> int:
    workers = instance.workers
    return len(workers._threads) - len(workers._idle)


def _settled(count: Callable[[], int], at_most: int, within: float = SETTLE) -> int:
    """``count()`` once it is ``at_most`` or ``within`` seconds have passed."""
    deadline = time.monotonic() + within
    while count() > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return count()


@contextlib.contextmanager
def _echo_servers(count: int) -> Iterator[List[UdpEchoServer]]:
    servers: List[UdpEchoServer] = []
    try:
        for _ in range(count):
            servers.append(UdpEchoServer())
            servers[-1].start()
        yield servers
    finally:
        for server in servers:
            server.close()


def _udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(WAIT)
    return sock


def test_quiet_dokodemo_sources_keep_no_thread_and_wake_for_more(
        udp_echo: UdpEchoServer) -> None:
    config = make_config([dokodemo(address="127.0.0.1", port=udp_echo.port, network="udp")],
                         [freedom()])
    with running_instance(config) as instance:
        door = ("127.0.0.1", port_of(instance, "door"))
        baseline = _threads_in_use(instance)
        clients = [_udp_client() for _ in range(HELD)]
        try:
            for i, sock in enumerate(clients):
                sock.sendto(b"first %d" % i, door)
                assert sock.recv(100) == b"first %d" % i
            time.sleep(copy_module.PARK_AFTER * 4)  # every idle reader has parked by now
            assert _settled(lambda: _threads_in_use(instance), baseline, SETTLE_BUSY) <= baseline
            # Each session's freedom socket waits in the selector, not in a thread.
            assert instance.readiness.waiting() == HELD
            for i, sock in enumerate(clients):  # the same sessions wake, both ways
                sock.sendto(b"again %d" % i, door)
                assert sock.recv(100) == b"again %d" % i
            assert instance.inbounds.get("door").udp_sessions() == HELD
        finally:
            for sock in clients:
                sock.close()


def test_quiet_socks_udp_targets_keep_no_thread_and_wake_for_more() -> None:
    config = make_config([socks_inbound(udp=True, ip="127.0.0.1")], [freedom()])
    with _echo_servers(HELD) as servers, running_instance(config) as instance:
        baseline = _threads_in_use(instance)
        client = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
        client.set_proxy(socks.SOCKS5, "127.0.0.1", port_of(instance, "socks-in"))
        client.settimeout(WAIT)
        try:
            for round_ in (b"first", b"again"):  # the second round wakes parked sessions
                for i, server in enumerate(servers):
                    client.sendto(b"%s %d" % (round_, i), server.address)
                    data, sender = client.recvfrom(100)
                    assert (data, sender) == (b"%s %d" % (round_, i), server.address)
                time.sleep(copy_module.PARK_AFTER * 4)
                assert _settled(lambda: _threads_in_use(instance), baseline,
                                SETTLE_BUSY) <= baseline
                # Each target's freedom socket waits in the selector, and so does the
                # SOCKS control connection's reader.
                assert instance.readiness.waiting() == HELD + 1
        finally:
            client.close()
        wait_idle(instance)


def _udp_rounds(socks_port: int, servers: List[UdpEchoServer], settled: Callable[[], None],
                logs: Callable[[], str]) -> None:
    proxy = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    proxy.set_proxy(socks.SOCKS5, "127.0.0.1", socks_port)
    proxy.settimeout(WAIT)
    try:
        for round_ in (b"first", b"again"):  # the second round wakes parked sub-connections
            for i, echo in enumerate(servers):
                proxy.sendto(b"%s %d" % (round_, i), echo.address)
                assert proxy.recvfrom(100)[0] == b"%s %d" % (round_, i), logs()
            settled()
    finally:
        proxy.close()


def _tcp_rounds(socks_port: int, echo: TcpEchoServer, settled: Callable[[], None],
                logs: Callable[[], str]) -> None:
    held: List[socks.socksocket] = []
    try:
        for round_ in (b"first", b"again"):
            for i in range(HELD):
                if len(held) <= i:
                    held.append(socks.socksocket())
                    held[i].set_proxy(socks.SOCKS5, "127.0.0.1", socks_port)
                    held[i].settimeout(WAIT)
                    held[i].connect(echo.address)
                held[i].sendall(b"%s %d" % (round_, i))
                assert recv_exact(held[i], len(b"%s %d" % (round_, i))) == \
                    b"%s %d" % (round_, i), logs()
            settled()
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("client,server,network,concurrency", [
    ("v2ray", "v2sync", "udp", HELD * 2), ("v2ray", "v2sync", "tcp", HELD * 2),
    ("v2sync", "v2ray", "tcp", HELD * 2), ("v2ray", "v2sync", "tcp", 1),
    ("v2sync", "v2ray", "tcp", 1)])
def test_quiet_mux_sub_connections_keep_no_thread(client: str, server: str, network: str,
                                                  concurrency: int) -> None:
    """Mux.cool sub-connections against 4.34 at the other end: on the server, each
    sub-connection's answers pump (and a UDP one's freedom session) park; on the client,
    each sub-connection's request pump parks. (A client's UDP sub-connection ends with
    its SOCKS table's entry, 4 s after its last datagram, sooner than this process's idle
    pool threads leave: TCP shows the client's pumps.) With concurrency 1 each stream is
    a mux connection of its own: its frame reader parks on both ends, and on the client
    the connection's own relay too (before: one thread a connection on the server, two
    on the client)."""
    ours = "server" if server == "v2sync" else "client"
    chain = start_mux_chain(client, server, concurrency=concurrency)
    try:
        process = getattr(chain, ours)
        baseline = _settled(lambda: process_thread_count(process.pid), 0)

        def settled() -> None:
            held = _settled(lambda: process_thread_count(process.pid), baseline + POOL_SLACK)
            # Before: 1-3 threads a sub-connection, so HELD more at least.
            assert held <= baseline + POOL_SLACK, (held, baseline)

        if network == "udp":
            with _echo_servers(HELD) as servers:
                _udp_rounds(chain.socks_port, servers, settled, chain.logs)
        else:
            with TcpEchoServer(max_connections=HELD + 4, timeout=30) as echo:
                _tcp_rounds(chain.socks_port, echo, settled, chain.logs)
    finally:
        chain.stop()


@pytest.mark.parametrize("protocol", ["vless", "trojan"])
def test_quiet_udp_over_vless_and_trojan_keep_no_thread(protocol: str) -> None:
    """A v2ray 4.34 client's UDP through VLESS or Trojan (one connection per target) to a
    v2sync server in this process: each connection's framed-datagram reader parks, and
    so does its freedom session."""
    port, socks_port = free_port(), free_port()
    config = keyed.server_config(keyed.server_inbound(protocol, port, {}))
    with _echo_servers(HELD) as servers, running_instance(config) as instance, \
            make_process("v2ray", keyed.client_config(
                socks_port, keyed.client_outbound(protocol, port, {}))) as client:
        baseline = _threads_in_use(instance)

        def settled() -> None:
            assert _settled(lambda: _threads_in_use(instance), baseline,
                            SETTLE_BUSY) <= baseline
            # The connection's reader and its freedom socket, each in the selector.
            assert instance.readiness.waiting() == 2 * HELD

        _udp_rounds(socks_port, servers, settled, client.log_tail)


def test_quiet_dns_sessions_keep_no_thread_and_wake_for_more(udp_echo: UdpEchoServer) -> None:
    """A DNS hijack's sessions (dokodemo-door to the dns outbound, one per client source
    port): an A query is answered from the built-in DNS, anything else goes upstream (an
    echo here, so the answer is the query). Quiet, each session's request side waits on
    its pipe and its upstream reader in the selector; the next message wakes them."""
    config = make_config([dokodemo(address="127.0.0.1", port=udp_echo.port, network="udp")],
                         [{"tag": "dns-out", "protocol": "dns"}])
    config["dns"] = {"hosts": {"example.com": "192.0.2.7"}}
    with running_instance(config) as instance:
        door = ("127.0.0.1", port_of(instance, "door"))
        baseline = _threads_in_use(instance)
        clients = [_udp_client() for _ in range(HELD)]
        try:
            for _ in range(2):  # the second round wakes parked sessions
                for sock in clients:
                    sock.sendto(dns.message.make_query("example.com", "A").to_wire(), door)
                    answer = dns.message.from_wire(sock.recv(512))
                    assert [item.address for rrset in answer.answer for item in rrset] == \
                        ["192.0.2.7"]
                    other = dns.message.make_query("example.com", "TXT").to_wire()
                    sock.sendto(other, door)
                    assert sock.recv(512) == other  # the upstream echo's answer
                time.sleep(copy_module.PARK_AFTER * 4)
                assert _settled(lambda: _threads_in_use(instance), baseline,
                                SETTLE_BUSY) <= baseline
                assert instance.readiness.waiting() == HELD  # each upstream socket
        finally:
            for sock in clients:
                sock.close()


def _v2ray_socks_server(port: int) -> Dict[str, Any]:
    inbound = {"tag": "socks-server", "protocol": "socks", "listen": "127.0.0.1",
               "port": port, "settings": {"auth": "noauth", "udp": True, "ip": "127.0.0.1"}}
    return {"log": ss.LOG, "inbounds": [inbound],
            "outbounds": [{"tag": "direct", "protocol": "freedom", "settings": {}}]}


@pytest.mark.parametrize("protocol", ["shadowsocks", "socks"])
def test_quiet_udp_through_shadowsocks_and_socks_clients_keep_no_thread(protocol: str) -> None:
    """v2sync as the client in this process (SOCKS5 UDP in, the Shadowsocks or SOCKS
    outbound), a real v2ray 4.34 as the server: each target's outbound UDP socket parks
    its reader, and its link's drain parks too."""
    port = free_port()
    if protocol == "shadowsocks":
        server_config = ss.ss_server_config(port, "aes-128-gcm")
        client_config = ss.ss_client_config(0, port, "aes-128-gcm")
    else:
        server_config = _v2ray_socks_server(port)
        client_config = make_config([socks_inbound(udp=True, ip="127.0.0.1")], [
            {"tag": "out", "protocol": "socks",
             "settings": {"servers": [{"address": "127.0.0.1", "port": port}]}}])
    with _echo_servers(HELD) as servers, make_process("v2ray", server_config) as server, \
            running_instance(client_config) as instance:
        baseline = _threads_in_use(instance)

        def settled() -> None:
            assert _settled(lambda: _threads_in_use(instance), baseline,
                            SETTLE_BUSY) <= baseline
            # Each target's UDP socket, and the SOCKS association's control connection.
            assert instance.readiness.waiting() == HELD + 1

        _udp_rounds(port_of(instance, "socks-in"), servers, settled, server.log_tail)


LOOKUP_THREADS = 4
DEAD_NAMES = 20
# An answer at hand comes at once; through the pool it waited for the dead lookups' deadline.
AT_HAND = 1.0


def test_lookups_of_a_dns_hijack_share_a_bounded_pool_newest_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each source port of a DNS hijack is a session of its own, so a cap per session
    bounded nothing: names nobody answers, asked from many ports, held a thread each for
    the DNS deadline (1,500: 2,139 threads; found by a review). The outbound's lookups
    share MAX_LOOKUP_THREADS threads; a fresh query is answered as soon as one is free,
    not after every query waiting before it. (The fresh name is dnsmasq's, so its lookup
    asks a server and takes the pool too.)"""
    monkeypatch.setattr(dns_outbound, "MAX_LOOKUP_THREADS", LOOKUP_THREADS)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent, \
            Dnsmasq(require_dnsmasq(), {"fresh.example": ["192.0.2.9"]}) as answering:
        silent.bind(("127.0.0.1", 0))  # never answers
        config = _dead_and_fresh_config(silent.getsockname()[1])
        # Asked first for the fresh name only (its domains); second for the dead ones.
        config["dns"]["servers"].append({"address": "127.0.0.1", "port": answering.port,
                                         "domains": ["full:fresh.example"]})
        with running_instance(config) as instance:
            door = ("127.0.0.1", port_of(instance, "door"))
            baseline = _threads_in_use(instance)
            with _dead_queries(door):
                # One pooled thread per lookup running, not per lookup asked.
                assert _settled(lambda: _threads_in_use(instance), baseline + LOOKUP_THREADS,
                                SETTLE_BUSY) <= baseline + LOOKUP_THREADS
                # After the first four dead lookups' deadline (4 s), not all five rounds.
                assert _fresh_answer(door) < WAIT


def test_an_answer_at_hand_takes_no_pooled_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hosts entry (or a cached answer) is answered in the session's own thread: with
    every pooled thread held by names nobody answers, it still comes at once (it waited
    for a free thread, one DNS deadline)."""
    monkeypatch.setattr(dns_outbound, "MAX_LOOKUP_THREADS", LOOKUP_THREADS)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # never answers
        silent.bind(("127.0.0.1", 0))
        config = _dead_and_fresh_config(silent.getsockname()[1])
        config["dns"]["hosts"] = {"fresh.example": "192.0.2.9"}
        with running_instance(config) as instance:
            door = ("127.0.0.1", port_of(instance, "door"))
            with _dead_queries(door):
                assert _fresh_answer(door) < AT_HAND


def _dead_and_fresh_config(silent_port: int) -> Dict[str, Any]:
    config = make_config([dokodemo(address="127.0.0.1", port=53, network="udp")],
                         [{"tag": "dns-out", "protocol": "dns"}])
    config["dns"] = {"servers": [{"address": "127.0.0.1", "port": silent_port}]}
    return config


@contextlib.contextmanager
def _dead_queries(door) -> Iterator[None]:
    """DEAD_NAMES queries nobody answers, each from a source port (a session) of its own,
    all of them started and in the lookup pool."""
    clients = [_udp_client() for _ in range(DEAD_NAMES)]
    try:
        for i, sock in enumerate(clients):
            sock.sendto(dns.message.make_query(f"dead{i}.example", "A").to_wire(), door)
        time.sleep(0.5)
        yield
    finally:
        for sock in clients:
            sock.close()


def _fresh_answer(door) -> float:
    """Seconds until fresh.example's answer (192.0.2.9) comes to a new source port."""
    with _udp_client() as fresh:
        started = time.monotonic()
        fresh.sendto(dns.message.make_query("fresh.example", "A").to_wire(), door)
        answer = dns.message.from_wire(fresh.recv(512))
        elapsed = time.monotonic() - started
    assert [item.address for rrset in answer.answer for item in rrset] == ["192.0.2.9"]
    return elapsed
