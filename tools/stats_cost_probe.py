#!/usr/bin/env python3
"""What the traffic counters cost the relay, in CPU time: stats on against off.

    python3 tools/stats_cost_probe.py [--rounds 3] [--downloads 10] [--echoes 1000]

``tools/bench.py relay --stats`` measures throughput and latency, which on a shared
machine swing by 2x between runs; CPU time spent by the proxy process (utime + stime from
/proc/PID/stat) moves much less. Each round runs v2sync (SOCKS5 -> freedom) twice, with
every counter off and on (``bench.with_stats``), interleaved: ``--downloads`` bulk
downloads of 64 MiB, then ``--echoes`` connections each echoing 1 KiB. Printed: the CPU
milliseconds per MiB and per connection of each run. Loopback only, every loop bounded.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT / "tools"), str(REPO_ROOT)]

from bench import with_stats  # noqa: E402
from bench_load import recv_exact, socks5_connect  # noqa: E402
from support.peers import MIB, BulkSource, TcpEchoServer, free_port  # noqa: E402
from support.procs import V2SyncProcess, socks_freedom_config  # noqa: E402

DOWNLOAD = 64 * MIB
ECHO = b"x" * 1024
SETTLE = 0.5
CLIENT_TIMEOUT = 60.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def download(port: int, bulk: BulkSource) -> None:
    with socks5_connect(port, bulk.address) as sock:
        got = 0
        while got < DOWNLOAD:
            data = sock.recv(4 * MIB)
            if not data:
                break
            got += len(data)


def one_run(stats: bool, args: argparse.Namespace, bulk: BulkSource,
            echo: TcpEchoServer) -> Tuple[float, float]:
    port = free_port()
    config = socks_freedom_config(port, access="none")
    if stats:
        config = with_stats(config)
    with V2SyncProcess(config) as proxy:
        time.sleep(SETTLE)
        start = cpu_seconds(proxy.pid)
        for _ in range(args.downloads):
            download(port, bulk)
        middle = cpu_seconds(proxy.pid)
        for _ in range(args.echoes):
            with socks5_connect(port, echo.address) as sock:
                sock.sendall(ECHO)
                recv_exact(sock, len(ECHO))
        time.sleep(SETTLE)  # the last relays finish
        end = cpu_seconds(proxy.pid)
    mib = args.downloads * DOWNLOAD / MIB
    return (middle - start) / mib * 1000, (end - middle) / args.echoes * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--downloads", type=int, default=10)
    parser.add_argument("--echoes", type=int, default=1000)
    args = parser.parse_args()
    results: Dict[bool, List[Tuple[float, float]]] = {False: [], True: []}
    with BulkSource(DOWNLOAD, max_connections=4, timeout=CLIENT_TIMEOUT) as bulk, \
            TcpEchoServer(max_connections=args.echoes + 100, timeout=CLIENT_TIMEOUT) as echo:
        for _ in range(max(1, min(args.rounds, 20))):
            for stats in (False, True):
                results[stats].append(one_run(stats, args, bulk, echo))
    for stats, runs in results.items():
        per_mib = ", ".join(f"{m:.3f}" for m, _ in runs)
        per_conn = ", ".join(f"{c:.3f}" for _, c in runs)
        print(f"stats {'on ' if stats else 'off'}: CPU ms per MiB [{per_mib}]  "
              f"per connection [{per_conn}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
