#!/usr/bin/env python3
"""CPU per MiB of a VMess or VLESS client talking to a v2ray 4.34 server (issue 19).

    python tools/client_cpu_probe.py [--protocol vmess|vless] [--stream tls|ws] [--mib 128]
                                     [--rounds 3] [--only v2sync|v2ray]

A throughput figure on a shared 2-core machine says as much about the neighbours as about
the client; the CPU the client process spends per MiB moved does not. For each client
implementation (v2sync, then the real v2ray), against a v2ray server in both cases: start
the pair of ``tools/bench.py``'s mixed scenario (SOCKS5 -> VMess aes-128-gcm, or VLESS,
over TLS or WS+TLS -> v2ray -> freedom), warm it with one transfer, then per round download and upload
``--mib`` through it and print MiB/s, the client's CPU ms per MiB (user + system, from
/proc), its context switches and minor page faults per MiB, and the v2ray server's CPU per
MiB (user + system): on two shared cores the server's share is the client's business too,
since how the client drains its socket changes what the server's kernel pays per MiB.

Loopback only; every transfer has the bench's deadline; every process is stopped in a
``finally`` (``bench.running_chain``).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # reuse the test harness (support.*)
sys.path.insert(0, str(REPO_ROOT / "tools"))  # and the benchmark's chains and transfers

import bench  # noqa: E402
from support.peers import BulkSink, BulkSource  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> Sequence[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def counters(pid: int) -> Dict[str, float]:
    """The process's CPU seconds, minor faults and context switches (all its threads)."""
    fields = _stat_fields(pid)
    switches = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
    for path in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(":")
                    if name in switches:
                        switches[name] += int(value)
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return {"cpu": (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            "user": int(fields[11]) / CLOCK_TICKS,
            "system": int(fields[12]) / CLOCK_TICKS,
            "minflt": float(fields[7]),
            "voluntary": float(switches["voluntary_ctxt_switches"]),
            "involuntary": float(switches["nonvoluntary_ctxt_switches"])}


def measured(pid: int, server_pid: int, mib: int, transfer: Callable[[], float]) -> str:
    before, server_before = counters(pid), counters(server_pid)
    rate = transfer()
    after, server_after = counters(pid), counters(server_pid)
    per = {name: (after[name] - before[name]) / mib for name in before}
    server = {name: 1000 * (server_after[name] - server_before[name]) / mib
              for name in ("user", "system")}
    return (f"{rate:6.0f} MiB/s  cpu {1000 * per['cpu']:5.2f} ms/MiB  "
            f"switches {per['voluntary']:.0f}+{per['involuntary']:.0f}/MiB  "
            f"minor faults {per['minflt']:.0f}/MiB  "
            f"server cpu {server['user']:4.2f}+{server['system']:4.2f} ms/MiB")


STREAMS: Dict[str, Callable[[], Tuple[Dict[str, object], Dict[str, object]]]] = {
    "tls": bench.tls_streams, "ws": bench.wss_streams}
PAIRS = {"vmess": bench.vmess_pair_configs, "vless": bench.vless_pair_configs}


def run(client: str, protocol: str, stream: str, mib: int, rounds: int) -> None:
    entry = bench.free_port()
    server_config, client_config = PAIRS[protocol](entry, *STREAMS[stream]())
    errors: list = []
    size = mib * bench.MIB
    with BulkSource(size, max_connections=4, timeout=bench.CLIENT_TIMEOUT) as source, \
            BulkSink(size, max_connections=4, timeout=bench.CLIENT_TIMEOUT) as sink, \
            bench.running_chain("v2ray", [server_config], errors) as servers, \
            bench.running_chain(client, [client_config], errors) as clients:
        pid, server_pid = clients[0].pid, servers[0].pid
        bench.measure_download(entry, source)  # warm-up: imports, first buffers
        bench.measure_upload(entry, sink)
        for _ in range(rounds):
            print(f"{client:6} {stream:3} download {measured(pid, server_pid, mib, lambda: bench.measure_download(entry, source))}",
                  flush=True)
            print(f"{client:6} {stream:3} upload   {measured(pid, server_pid, mib, lambda: bench.measure_upload(entry, sink))}",
                  flush=True)
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=sorted(PAIRS), default="vmess")
    parser.add_argument("--stream", choices=sorted(STREAMS), default="ws")
    parser.add_argument("--mib", type=int, default=128, help="MiB per transfer (default 128)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=bench.IMPLEMENTATIONS)
    args = parser.parse_args()
    mib = max(1, min(args.mib, 1024))
    rounds = max(1, min(args.rounds, 10))
    for client in (args.only,) if args.only else bench.IMPLEMENTATIONS:
        run(client, args.protocol, args.stream, mib, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
