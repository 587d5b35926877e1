"""A finished connection is freed by reference counting: no protocol chain leaves cyclic
garbage for the collector (common/heap.py says what that garbage cost). Each chain of
tools/bench.py runs in this process, connections go through it over loopback, and then
the collector must find nothing."""
from __future__ import annotations

import collections
import contextlib
import gc
import time

import pytest

from scenarios.bench_chains import CHAINS, bench
from scenarios.helpers_scenarios import running_instance, wait_idle
from support.peers import TcpEchoServer, free_port


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
