"""A prober who does not know the user ids, against v2sync and the real v2ray 4.34.

It sends random bytes (an unknown AuthID, so both servers answer by draining) in 256-byte
chunks and waits after each for the server to react. It records how many bytes it had sent
when the connection ended, and how it ended: a FIN (EOF), or a reset. 4.34 reads whatever
arrives until its drain count is met and closes with nothing unread, so its kernel sends a
FIN; v2sync must end the same way and drain by the same rule (``Base + 16 + 38 +
Roll(RandDrainMax)`` from a per-server seed): within the same range, and, probe after
probe against one server, within the same narrow window.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Iterator, List, Tuple

import pytest
from scenarios.helpers_scenarios import how_it_ends
from scenarios.vmess_helpers import make_process, server_config
from support.procs import ConfigProcess
from support.peers import free_port

CHUNK = 256
PROBES = 4
# After each chunk the prober waits this long for the server's reaction.
REACTION_WAIT = 0.08
# validator.py: Base < 3266, plus 16 + 38, plus a roll below RandDrainMax <= 65.
MAX_DRAIN = 3265 + 16 + 38 + 64
# Chunks sent before giving up: well past any drain size.
MAX_CHUNKS = MAX_DRAIN // CHUNK + 4
# Per server, totals differ only by the random roll (< 65 bytes), rounded up to chunks.
SAME_SERVER_SPREAD = 64 + CHUNK


@pytest.fixture(scope="module", params=["v2ray", "v2sync"])
def server(request) -> Iterator[Tuple[str, int]]:
    port = free_port()
    process: ConfigProcess = make_process(request.param, server_config(port, alter_id=0))
    process.start()
    try:
        yield request.param, port
    finally:
        process.stop(check=False)


def probe(port: int) -> Tuple[str, int]:
    """One probe: (how it ended, bytes sent by then)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sent = 0
    try:
        for _ in range(MAX_CHUNKS):
            sock.sendall(os.urandom(CHUNK))
            sent += CHUNK
            ending = how_it_ends(sock, REACTION_WAIT)
            if ending:
                return ending, sent
        return "still open", sent
    finally:
        sock.close()


def test_drain_ends_as_4_34_does(server):
    name, port = server
    results: List[Tuple[str, int]] = []
    for _ in range(PROBES):
        results.append(probe(port))
        time.sleep(0.05)
    endings = {ending for ending, _ in results}
    totals = [total for _, total in results]
    assert endings == {"fin"}, f"{name}: {results}"
    assert all(16 + 38 <= total <= MAX_DRAIN + CHUNK for total in totals), f"{name}: {totals}"
    assert max(totals) - min(totals) <= SAME_SERVER_SPREAD, f"{name}: {totals}"
