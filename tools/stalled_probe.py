#!/usr/bin/env python3
"""Memory under slow readers: N downloads through SOCKS5 -> freedom whose client never reads.

    python tools/stalled_probe.py [--connections 100] [--rounds 1] [--only v2sync|v2ray]
                                  [--chain relay|vmess] [--buffer-size KIB] [--download-mib 64]

v2sync and the real v2ray run one after the other in the same run, against the same origin.
The origin and the stalled client each run in a process of their own (this script, with
``--role origin`` / ``--role client``), so the proxy's RSS is the only thing measured and no
client thread competes with it for a CPU. Per implementation and round:

1. start the proxy (``tests/support/procs``: SOCKS5 inbound -> freedom, access log off; or
   with ``--chain vmess`` the VMess server and client of ``tools/bench.py``, whose RSS,
   threads and peak are summed);
2. warm it up with a few short downloads that are read to the end, let it settle, and take
   its RSS as the baseline;
3. the client opens N SOCKS5 CONNECTs to the origin, which sends ``--download-mib`` to each
   as fast as the path lets it; the client never reads;
4. wait (bounded) until the proxy's RSS has stopped growing, and report the growth, the peak
   (``VmHWM``), the proxy's threads and the bytes the origin managed to send: what is in
   flight, split between kernel socket buffers and the proxy's own buffers.

Loopback only; every loop is bounded in count and time; every process is stopped in a
``finally``. The children end when their stdin closes, so a killed parent leaves none behind.
"""
from __future__ import annotations

import argparse
import contextlib
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # reuse the test harness (support.*)
sys.path.insert(0, str(REPO_ROOT / "tools"))  # and the benchmark's SOCKS5 client

import bench  # noqa: E402
from support.peers import free_port  # noqa: E402
from support.procs import (ConfigProcess, V2RayProcess, V2SyncProcess,  # noqa: E402
                           socks_freedom_config)

KIB = 1024
MIB = 1024 * KIB
IMPLEMENTATIONS = ("v2sync", "v2ray")

SEND_BLOCK = bytes(i % 251 for i in range(MIB))
WARMUP_DOWNLOADS = 3
WARMUP_BYTES = 256 * KIB
SETTLE_SECONDS = 1.0
POLL_SECONDS = 0.25
# RSS is stable once it grew less than this over STABLE_WINDOW seconds.
STABLE_GROWTH_KIB = 512
STABLE_WINDOW = 3.0
FILL_DEADLINE = 90.0
CHILD_LIFETIME = 600.0  # a child never outlives this, whatever its parent does
CLIENT_TIMEOUT = 10.0
PROXY_READY_TIMEOUT = 30.0
CHILD_READY_TIMEOUT = 60.0


# -- the origin process ---------------------------------------------------------------------

class _Download:
    __slots__ = ("sock", "left")

    def __init__(self, sock: socket.socket, left: int):
        self.sock = sock
        self.left = left


class Origin:
    """Two listeners in one selector loop: ``small`` sends WARMUP_BYTES per connection,
    ``large`` sends ``large_bytes``; both as fast as the peer takes them, then FIN."""

    def __init__(self, large_bytes: int):
        self.sel = selectors.DefaultSelector()
        self.sent = 0
        self.small = self._listen(WARMUP_BYTES)
        self.large = self._listen(large_bytes)
        self.sel.register(sys.stdin, selectors.EVENT_READ, "stdin")

    def _listen(self, per_connection: int) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, ("listener", per_connection))
        return sock.getsockname()[1]

    def run(self) -> None:
        print(f"ports {self.small} {self.large}", flush=True)
        deadline = time.monotonic() + CHILD_LIFETIME
        while time.monotonic() < deadline:
            for key, _ in self.sel.select(timeout=1.0):
                if key.data == "stdin":
                    if not self._command(sys.stdin.readline()):
                        return
                elif isinstance(key.data, tuple):
                    self._accept(key.fileobj, key.data[1])
                else:
                    self._pump(key.data)

    def _command(self, line: str) -> bool:
        if not line:
            return False  # the parent is gone or done
        print(f"sent {self.sent}", flush=True)
        return True

    def _accept(self, listener, per_connection: int) -> None:
        with contextlib.suppress(BlockingIOError):
            sock, _ = listener.accept()
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_WRITE, _Download(sock, per_connection))

    def _pump(self, download: _Download) -> None:
        sock = download.sock
        try:
            if download.left <= 0:  # FIN sent: wait for the peer's close
                if sock.recv(65536):
                    return
            else:
                n = sock.send(memoryview(SEND_BLOCK)[:min(download.left, len(SEND_BLOCK))])
                download.left -= n
                self.sent += n
                if download.left > 0:
                    return
                sock.shutdown(socket.SHUT_WR)
                self.sel.modify(sock, selectors.EVENT_READ, download)
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self.sel.unregister(sock)
        sock.close()


# -- the stalled client process -------------------------------------------------------------

def socks5_connect(proxy_port: int, target_port: int) -> socket.socket:
    return bench.socks5_connect(proxy_port, ("127.0.0.1", target_port), CLIENT_TIMEOUT)


def run_client(proxy_port: int, target_port: int, count: int) -> None:
    """Open ``count`` downloads, never read them, close them all when stdin closes."""
    held = [socks5_connect(proxy_port, target_port) for _ in range(count)]
    print(f"ready {len(held)}", flush=True)
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    deadline = time.monotonic() + CHILD_LIFETIME
    while time.monotonic() < deadline and not (sel.select(1.0) and not sys.stdin.readline()):
        pass
    for sock in held:
        sock.close()


def warm_up(proxy_port: int, target_port: int) -> None:
    for _ in range(WARMUP_DOWNLOADS):
        with socks5_connect(proxy_port, target_port) as sock:
            while sock.recv(65536):
                pass


# -- the parent -----------------------------------------------------------------------------

class Child:
    """This script in another role, talking over its stdin/stdout."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def line(self, prefix: str) -> List[str]:
        """The child's next stdout line, which must start with ``prefix``."""
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(CHILD_READY_TIMEOUT):
            raise RuntimeError(f"no {prefix!r} line within {CHILD_READY_TIMEOUT} s")
        words = self.proc.stdout.readline().split()
        if not words or words[0] != prefix:
            raise RuntimeError(f"expected {prefix!r}, got {words}")
        return words[1:]

    def ask(self, prefix: str) -> List[str]:
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return self.line(prefix)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def child(*args: str) -> Iterator[Child]:
    process = Child(*args)
    try:
        yield process
    finally:
        process.stop()


@dataclass
class Sample:
    implementation: str
    baseline_kib: int = 0
    stalled_kib: int = 0
    peak_kib: int = 0
    threads: int = 0
    in_flight: int = 0  # bytes the origin sent that the client never read
    connections: int = 0
    errors: List[str] = field(default_factory=list)

    @property
    def added_mib(self) -> float:
        return (self.stalled_kib - self.baseline_kib) / KIB

    @property
    def per_connection_kib(self) -> float:
        return (self.stalled_kib - self.baseline_kib) / max(self.connections, 1)


def proc_status(pid: int) -> Dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "Threads"):
                fields[name] = int(value.split()[0])
    return fields


def wait_until_stable(pids: Sequence[int]) -> int:
    """Poll RSS until it grew < STABLE_GROWTH_KIB over STABLE_WINDOW s (bounded); return it."""
    history: List[int] = []
    window = int(STABLE_WINDOW / POLL_SECONDS)
    deadline = time.monotonic() + FILL_DEADLINE
    while time.monotonic() < deadline:
        history.append(total_status(pids)["VmRSS"])
        if len(history) > window and history[-1] - history[-1 - window] < STABLE_GROWTH_KIB:
            break
        time.sleep(POLL_SECONDS)
    return history[-1]


def chain_configs(chain: str, port: int, buffer_kib: Optional[int]) -> List[Dict[str, Any]]:
    """The configs of a chain whose SOCKS5 entry is ``port``, servers first."""
    if chain == "vmess":  # SOCKS5 -> VMess -> VMess -> freedom, two processes
        configs = bench.vmess_pair_configs(port)
    else:
        configs = [socks_freedom_config(port, access="none")]
    if buffer_kib is not None:  # VMess users and SOCKS are level 0
        for config in configs:
            config["policy"] = {"levels": {"0": {"bufferSize": buffer_kib}}}
    return configs


@contextlib.contextmanager
def running_chain(implementation: str, configs: Sequence[Dict[str, Any]]
                  ) -> Iterator[List[ConfigProcess]]:
    cls = V2RayProcess if implementation == "v2ray" else V2SyncProcess
    processes: List[ConfigProcess] = []
    try:
        for config in configs:
            processes.append(cls(config, ready_timeout=PROXY_READY_TIMEOUT))
            processes[-1].start()
        yield processes
    finally:
        for process in reversed(processes):
            process.stop(check=False)


def total_status(pids: Sequence[int]) -> Dict[str, int]:
    totals: Dict[str, int] = {}
    for pid in pids:
        for name, value in proc_status(pid).items():
            totals[name] = totals.get(name, 0) + value
    return totals


def measure(implementation: str, origin: Child, ports: Sequence[int], count: int,
            chain: str, buffer_kib: Optional[int]) -> Sample:
    sample = Sample(implementation)
    port = free_port()
    with running_chain(implementation, chain_configs(chain, port, buffer_kib)) as processes:
        pids = [process.pid for process in processes]
        for _ in range(WARMUP_DOWNLOADS):
            warm_up(port, ports[0])
        time.sleep(SETTLE_SECONDS)
        sample.baseline_kib = total_status(pids)["VmRSS"]
        sent_before = int(origin.ask("sent")[0])
        with child("--role", "client", str(port), str(ports[1]), str(count)) as client:
            sample.connections = int(client.line("ready")[0])
            sample.stalled_kib = wait_until_stable(pids)
            status = total_status(pids)
            sample.peak_kib, sample.threads = status["VmHWM"], status["Threads"]
            sample.in_flight = int(origin.ask("sent")[0]) - sent_before
    return sample


CHAINS = {"relay": "SOCKS5 -> freedom",
          "vmess": "SOCKS5 -> VMess -> VMess -> freedom (two processes, summed)"}


def report(samples: Sequence[Sample], chain: str, buffer_kib: Optional[int]) -> None:
    policy = "default" if buffer_kib is None else f"{buffer_kib} KiB"
    print(f"\nstalled downloads, {CHAINS[chain]}, bufferSize {policy}")
    header = (f"{'implementation':<14} {'conns':>5} {'base MiB':>9} {'added MiB':>10} "
              f"{'KiB/conn':>9} {'peak MiB':>9} {'threads':>7} {'in flight MiB':>13}")
    print(header)
    print("-" * len(header))
    for s in samples:
        print(f"{s.implementation:<14} {s.connections:>5} {s.baseline_kib / KIB:>9.1f} "
              f"{s.added_mib:>10.1f} {s.per_connection_kib:>9.0f} {s.peak_kib / KIB:>9.1f} "
              f"{s.threads:>7} {s.in_flight / MIB:>13.1f}")
    by_name: Dict[str, List[float]] = {}
    for s in samples:
        by_name.setdefault(s.implementation, []).append(s.added_mib)
    if len(by_name) == 2 and all(by_name.values()):
        ratio = (sum(by_name["v2sync"]) / len(by_name["v2sync"])) / \
                (sum(by_name["v2ray"]) / len(by_name["v2ray"]))
        print(f"added RSS, v2sync / v2ray: {ratio:.2f}x (target <= 1.5x)")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1, help="measurements per implementation")
    parser.add_argument("--only", choices=IMPLEMENTATIONS)
    parser.add_argument("--chain", choices=sorted(CHAINS), default="relay")
    parser.add_argument("--buffer-size", type=int, help="policy level 0 bufferSize (KiB)")
    parser.add_argument("--download-mib", type=int, default=64,
                        help="MiB each origin download offers")
    parser.add_argument("--role", choices=("origin", "client"), help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.role == "origin":
        Origin(int(args.role_args[0])).run()
        return 0
    if args.role == "client":
        run_client(*(int(a) for a in args.role_args))
        return 0
    implementations = (args.only,) if args.only else IMPLEMENTATIONS
    samples = []
    with child("--role", "origin", str(args.download_mib * MIB)) as origin:
        ports = [int(p) for p in origin.line("ports")]
        for _ in range(args.rounds):
            for implementation in implementations:
                print(f"  {implementation} ...", file=sys.stderr, flush=True)
                samples.append(measure(implementation, origin, ports, args.connections,
                                       args.chain, args.buffer_size))
    report(samples, args.chain, args.buffer_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
