"""A held, idle connection's socket readers park: their tasks give their threads back and
their sockets wait in the Instance's ReadWaiter (transport/internet/readiness.py), then a
pooled thread reads when bytes come. Real sockets: a SOCKS5 client through the bench's
chains, in this process, to an echo origin; over TLS the answer is bigger than a read, so
plaintext waits in the TLS engine when the reader looks again, and a reader that parked on
the socket alone would never see it."""
from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest

from scenarios.bench_chains import CHAINS as ALL_CHAINS
from scenarios.bench_chains import bench
from scenarios.helpers_scenarios import recv_exact, running_instance, wait_idle
from support.peers import TcpEchoServer, free_port
from v2sync.transport import copy as copy_module

HELD = 12
WAIT = 5.0
# Several TLS records and more than any idle read asks for.
ANSWER_SIZE = 40 * 1024

# Every bench chain but mux: its sub-connections share one mux connection and its reader,
# so a process does not park two readers per held connection there.
CHAINS = {name: build for name, build in ALL_CHAINS.items() if name != "vmess-mux"}
# Readers parked per connection in each process (servers first), where not two (none yet).
PARKED_PER_CONNECTION: dict = {}


def _threads_in_use(instance) -> int:
    workers = instance.workers
    return len(workers._threads) - len(workers._idle)


def _all_parked(instances, expected) -> bool:
    return all(i.readiness.waiting() >= n for i, n in zip(instances, expected))


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_idle_readers_park_and_wake_for_more(chain):
    port = free_port()
    with TcpEchoServer(max_connections=HELD + 40, timeout=30) as echo, \
            contextlib.ExitStack() as stack:
        instances = [stack.enter_context(running_instance(config))
                     for config in CHAINS[chain](port)]
        per_connection = PARKED_PER_CONNECTION.get(chain, [2] * len(instances))
        expected = [HELD * n for n in per_connection]
        held = []
        try:
            for _ in range(HELD):
                held.append(bench.open_idle_connection(port, echo))
            time.sleep(copy_module.PARK_AFTER * 4)
            deadline = time.monotonic() + WAIT
            while not _all_parked(instances, expected) and time.monotonic() < deadline:
                time.sleep(0.05)
            # Every process parks two readers per connection, its inbound's and its
            # outbound's; what keeps a thread is the handshake selector's leader (and a
            # reader that does not park).
            assert [i.readiness.waiting() for i in instances] == expected
            for instance, n in zip(instances, per_connection):
                assert _threads_in_use(instance) <= 1 + HELD * (2 - n)
            for sock in held:  # each parked reader wakes for its answer, whole
                payload = os.urandom(ANSWER_SIZE)
                sock.sendall(payload)
                assert recv_exact(sock, ANSWER_SIZE) == payload
        finally:
            for sock in held:
                sock.close()
        for instance in instances:
            wait_idle(instance)
            assert instance.readiness.waiting() == 0


GREETING = b"the origin speaks first\n"


@pytest.mark.parametrize("chain", ["vless-tls", "trojan-tls"])
def test_the_request_header_goes_alone_when_the_client_sends_nothing(chain):
    """The header waits up to 100 ms to leave with the first payload (keyed.RequestHead);
    an origin that speaks first must be reached all the same, and then echo as usual."""
    port = free_port()
    with TcpEchoServer(max_connections=8, timeout=30, send_first=GREETING) as origin, \
            contextlib.ExitStack() as stack:
        for config in CHAINS[chain](port):
            stack.enter_context(running_instance(config))
        sock = bench.socks5_connect(port, origin.address, timeout=WAIT)
        try:
            assert recv_exact(sock, len(GREETING)) == GREETING
            sock.sendall(b"and then")
            assert recv_exact(sock, 8) == b"and then"
        finally:
            sock.close()


BULK = 4 * 1024 * 1024


# The chains whose client reads TLS, where bulk reads are batched (conn.recv_waiting).
@pytest.mark.parametrize("chain", ["vmess-ws-tls", "vless-tls"])
def test_a_short_answer_after_a_bulk_transfer_wakes_its_parked_readers(chain):
    """A bulk echo makes the readers batch (SO_RCVLOWAT raised: ``conn.recv_waiting``);
    then the connection idles until they park, and a short message comes back whole. Each
    reader lowers its mark before it parks, or its epoll would wait for 64 KiB."""
    port = free_port()
    with TcpEchoServer(max_connections=8, timeout=30) as echo, contextlib.ExitStack() as stack:
        instances = [stack.enter_context(running_instance(config))
                     for config in CHAINS[chain](port)]
        sock = bench.socks5_connect(port, echo.address, timeout=WAIT)
        try:
            payload = os.urandom(BULK)
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            try:
                assert recv_exact(sock, BULK) == payload
            finally:
                sender.join(WAIT)
            deadline = time.monotonic() + WAIT
            while not _all_parked(instances, [2] * len(instances)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _all_parked(instances, [2] * len(instances))
            sock.sendall(b"short")
            assert recv_exact(sock, 5) == b"short"
        finally:
            sock.close()
        for instance in instances:
            wait_idle(instance)
