#!/usr/bin/env python3
"""How long one stalled sub-connection stalls the others on its Mux.cool connection.

    python tools/mux_stall_probe.py [--conn-idle 6] [--only v2sync|v2ray]

Per implementation (both processes of the chain the same one): SOCKS5 -> VMess + mux ->
VMess -> freedom, with ``policy.levels.0.connIdle`` set on both processes. Sub-connection A
downloads an endless stream and its client never reads; sub-connection B, on the same mux
connection (mux concurrency 8, so the same worker), sends 1 KiB every 100 ms from a thread
of its own and times each echo against its send. Printed: B's longest echo round trip (the
stall), its median, and when the stall ended (seconds after A stopped reading).

Both implementations block the mux connection's reading side while A's pipe is full (4.34:
``ClientWorker.handleStatusKeep`` writes into the sub-connection's pipe), so B waits until
A's own inactivity timer (connIdle) ends A. Loopback only; bounded in time; every process
is stopped in a ``finally``.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "tools"))
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import mux_pair_configs, running_chain  # noqa: E402
from bench_load import recv_exact, socks5_connect  # noqa: E402
from support.peers import BulkSource, TcpEchoServer, free_port  # noqa: E402

PING = bytes(1024)
PING_EVERY = 0.1
ECHO_TIMEOUT = 120.0


def probe(implementation: str, conn_idle: int) -> Dict[str, float]:
    policy = {"levels": {"0": {"connIdle": conn_idle}}}
    entry = free_port()
    configs = mux_pair_configs(entry)
    for config in configs:
        config["policy"] = policy
    errors: List[str] = []
    with BulkSource(1 << 40, timeout=ECHO_TIMEOUT) as source, \
            TcpEchoServer(timeout=ECHO_TIMEOUT) as echo, \
            running_chain(implementation, configs, errors):
        with socks5_connect(entry, echo.address, timeout=ECHO_TIMEOUT) as pinger:
            pinger.sendall(PING)  # B first, so it opens the worker A then joins
            recv_exact(pinger, len(PING))
            stalled = socks5_connect(entry, source.address, timeout=ECHO_TIMEOUT)  # A: never read
            try:
                return _pings(pinger, 3 * conn_idle)
            finally:
                stalled.close()


def _pings(sock: socket.socket, seconds: float) -> Dict[str, float]:
    """A ping every 100 ms from a thread of its own (B's request side never idles, so only
    A's timer can fire), each echo timed against its own send time."""
    started = time.monotonic()
    count = int(seconds / PING_EVERY)
    sent_at: List[float] = []

    def send() -> None:
        for _ in range(count):
            sent_at.append(time.monotonic())
            sock.sendall(PING)
            time.sleep(PING_EVERY)

    sender = threading.Thread(target=send, name="stall-pinger")
    sender.start()
    samples: List[float] = []
    worst, worst_end = 0.0, 0.0
    try:
        for index in range(count):
            recv_exact(sock, len(PING))
            took = time.monotonic() - sent_at[index]
            samples.append(took)
            if took > worst:
                worst, worst_end = took, time.monotonic() - started
    finally:
        sender.join(ECHO_TIMEOUT)
    return {"longest echo (s)": worst, "median echo (ms)": 1000 * statistics.median(samples),
            "stall ended at (s)": worst_end, "echoes": float(len(samples))}


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conn-idle", type=int, default=6)
    parser.add_argument("--only", choices=("v2sync", "v2ray"))
    args = parser.parse_args(argv or None)
    for implementation in ([args.only] if args.only else ["v2sync", "v2ray"]):
        figures = probe(implementation, args.conn_idle)
        print(f"{implementation} (connIdle {args.conn_idle} s): " +
              ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
