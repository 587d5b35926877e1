"""A finished connection is freed by reference counting: no protocol chain leaves cyclic
garbage for the collector (common/heap.py says what that garbage cost). Each chain of
tools/bench.py runs in this process, connections go through it over loopback, and then
the collector must find nothing."""
from __future__ import annotations

import collections
import contextlib
import gc
import socket
import time

import pytest

from scenarios.bench_chains import CHAINS, bench
from scenarios.helpers_scenarios import make_config, port_of, running_instance, wait_idle
from support.peers import TcpEchoServer, free_port
from v2sync.app.proxyman import udp_worker


CONNECTIONS = 20
SETTLE = 0.3  # the relay's last steps after the client's close (both ends, uplinkOnly 0)
# A mux connection outlives its sub-connections (until the 16 s idle tick): those chains
# are never idle, so their sub-connections get a longer settle instead.
MUX_SETTLE = 1.5



def _garbage_after(echo_many) -> collections.Counter:
    """Run ``echo_many`` with the collector off; what it then finds, by type."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what it finds, to name it
    gc.disable()
    try:
        echo_many()
        gc.collect()
        return collections.Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _quick_teardown(config: dict) -> dict:
    """``config`` whose relays end as soon as one side has (uplinkOnly and downlinkOnly 0):
    each connection still runs its whole course, and the test waits no linger out."""
    policy = dict(config.get("policy") or {})
    levels = dict(policy.get("levels") or {})
    levels["0"] = {**levels.get("0", {}), "uplinkOnly": 0, "downlinkOnly": 0}
    return {**config, "policy": {**policy, "levels": levels}}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_connections_leave_no_cyclic_garbage(chain):
    port = free_port()
    with TcpEchoServer(max_connections=2 * CONNECTIONS + 40, timeout=30) as echo, \
            contextlib.ExitStack() as stack:
        instances = [stack.enter_context(running_instance(_quick_teardown(config)))
                     for config in CHAINS[chain](port)]

        def settle() -> None:
            if "mux" in chain:
                time.sleep(MUX_SETTLE)
                return
            time.sleep(SETTLE)
            for instance in instances:
                wait_idle(instance)

        for _ in range(5):  # first-use caches and lazy imports are not the connection's
            bench.echo_once(port, echo)
        settle()

        def echo_many() -> None:
            for _ in range(CONNECTIONS):
                bench.echo_once(port, echo)
            settle()

        found = _garbage_after(echo_many)
    assert not found, f"{chain}: cyclic garbage after {CONNECTIONS} connections: {dict(found)}"


UDP_SESSIONS = 10


@pytest.mark.parametrize("outbound", ["freedom", "dns"])
def test_udp_sessions_leave_no_cyclic_garbage(udp_echo, monkeypatch, outbound):
    """dokodemo-door UDP sessions, each to freedom or the dns outbound (an upstream
    message, echoed), closed by the worker's idle sweep: their parked steps (the source's
    queue, freedom's socket reader, the dns outbound's latch) leave no cycle."""
    monkeypatch.setattr(udp_worker, "SESSION_IDLE", 0.2)
    monkeypatch.setattr(udp_worker, "CLEAN_INTERVAL", 0.1)
    door = {"tag": "door", "protocol": "dokodemo-door", "listen": "127.0.0.1", "port": 0,
            "settings": {"address": "127.0.0.1", "port": udp_echo.port, "network": "udp"}}
    config = _quick_teardown(make_config([door], [{"protocol": outbound}]))
    with running_instance(config) as instance:
        address = ("127.0.0.1", port_of(instance, "door"))

        def sessions(count: int) -> None:
            for i in range(count):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(5.0)
                    sock.sendto(b"\x12\x34not a query %d" % i, address)
                    assert sock.recv(100) == b"\x12\x34not a query %d" % i
            wait_idle(instance)

        sessions(3)  # first-use caches and lazy imports are not the sessions'
        found = _garbage_after(lambda: sessions(UDP_SESSIONS))
    assert not found, f"{outbound}: cyclic garbage after {UDP_SESSIONS} sessions: {dict(found)}"
