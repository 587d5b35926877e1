#!/usr/bin/env python3
"""Teardown at scale and SIGTERM under load, measured (issue 14, parts 2 and 9).

    python tools/massclose_probe.py massclose [-n 2000] [--impl v2sync|v2ray]
    python tools/massclose_probe.py sigterm   [-n 2000] [--impl v2sync|v2ray]

Three processes besides this one: the proxy (SOCKS5 -> freedom), an echo origin and a
holder that opens ``-n`` connections through the proxy (each checked with one echo).

``massclose``: the holder closes every connection at once; from that moment this process
sends ``--requests`` fresh requests (connect, SOCKS5, 1 KiB echo), one every ``--spacing``
seconds, each in its own thread so a slow one does not delay the next, and samples the
proxy's thread count until it is back to its baseline (taken before the connections were
opened, after a warm-up; parked pool workers expire after 2 s, so "baseline + 32" is
reported as well).

``sigterm``: the holder keeps every connection busy (1 KiB echoes back to back); this
process sends SIGTERM and reports the time to exit and the exit code.

``--rounds K`` repeats and summarises: runs vary a lot on a shared machine, and a teardown
either flows or stalls, so one round says little. ``--pythonpath DIR`` puts a
``sitecustomize.py`` in front of v2sync (e.g. to try another ``sys.setswitchinterval``);
``--sample CMD`` runs ``CMD PID`` just before the close (``perf record -g -p``, or a script
that sends a signal whose handler dumps ``sys._current_frames()``; py-spy is too slow to
attach to 8,000 threads).

Every wait is bounded and every process is stopped in a ``finally``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]  # reuse the test harness

from scenarios.helpers_scenarios import recv_exact  # noqa: E402
from support.peers import free_port  # noqa: E402
from support.procs import (  # noqa: E402
    ConfigProcess,
    V2RayProcess,
    V2SyncProcess,
    socks_freedom_config,
)
from support.resources import process_thread_count  # noqa: E402

PAYLOAD = bytes(range(256)) * 4  # 1 KiB
IO_TIMEOUT = 60.0
OPEN_DEADLINE = 300.0
THREAD_WATCH = 30.0
THREAD_POLL = 0.05
MAX_IDLE_WORKERS = 32  # v2sync.common.task.MAX_IDLE
EXIT_WATCH = 30.0
BUSY_SECONDS = 1.0  # how long the busy connections run before SIGTERM
MAX_LOG_LINES = 10  # of the proxy's log, printed after a SIGTERM
SAMPLER_START = 1.5  # a profiler started with --sample gets this long to attach


# -- the SOCKS5 client ------------------------------------------------------------------------

def socks_open(proxy: int, origin: int, timeout: float = IO_TIMEOUT,
               phases: Optional[List[float]] = None) -> socket.socket:
    """A SOCKS5 CONNECT to ``origin`` checked with a 1 KiB echo; ``phases`` gets the time
    of each step (connected, method reply, CONNECT reply, echo)."""
    phases = [] if phases is None else phases
    sock = socket.create_connection(("127.0.0.1", proxy), timeout=timeout)
    try:
        phases.append(time.monotonic())
        sock.sendall(b"\x05\x01\x00")
        if recv_exact(sock, 2) != b"\x05\x00":
            raise ConnectionError("SOCKS5 method refused")
        phases.append(time.monotonic())
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + origin.to_bytes(2, "big"))
        reply = recv_exact(sock, 10)
        if reply[1] != 0:
            raise ConnectionError(f"SOCKS5 reply {reply[1]}")
        phases.append(time.monotonic())
        sock.sendall(PAYLOAD)
        if recv_exact(sock, len(PAYLOAD)) != PAYLOAD:
            raise ConnectionError("wrong echo")
        phases.append(time.monotonic())
        return sock
    except BaseException:
        sock.close()
        raise


def timed_request(proxy: int, origin: int, phases: Optional[List[float]] = None) -> float:
    started = time.monotonic()
    phases = [] if phases is None else phases
    socks_open(proxy, origin, phases=phases).close()
    phases[:] = [round((t - started) * 1000) for t in phases]
    return time.monotonic() - started


# -- the origin and the holder (child processes of this script) ------------------------------

class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        return False  # close our side too


async def _origin_main() -> None:
    server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # EOF: exit
    server.close()


def holder_main(proxy: int, origin: int, count: int, busy: bool) -> None:
    socks = []
    deadline = time.monotonic() + OPEN_DEADLINE
    while len(socks) < count and time.monotonic() < deadline:
        socks.append(socks_open(proxy, origin))
    print(f"ready {len(socks)}", flush=True)
    if busy:
        _keep_busy(socks)
    else:
        sys.stdin.readline()
        started = time.monotonic()
        for sock in socks:
            sock.close()
        print(f"closed {len(socks)} in {time.monotonic() - started:.3f}s", flush=True)
        sys.stdin.readline()


def _keep_busy(socks: List[socket.socket]) -> None:
    """1 KiB echoes back to back on every connection until they are closed or stdin ends."""
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    for sock in socks:
        sock.setblocking(False)
        sock.send(PAYLOAD)
        selector.register(sock, selectors.EVENT_READ, [0])
    live = len(socks)
    while live:
        for key, _ in selector.select(1.0):
            if key.data is None:
                return  # the driver is done
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if not data:
                selector.unregister(key.fileobj)
                live -= 1
                continue
            key.data[0] += len(data)
            if key.data[0] >= len(PAYLOAD):
                key.data[0] -= len(PAYLOAD)
                try:
                    key.fileobj.send(PAYLOAD)
                except OSError:
                    pass


# -- the driver -------------------------------------------------------------------------------

def _child(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _proxy(args: argparse.Namespace, port: int) -> ConfigProcess:
    config = socks_freedom_config(port, access="none")
    if args.impl == "v2ray":
        return V2RayProcess(config, stop_timeout=EXIT_WATCH).start()
    env = {"PYTHONPATH": args.pythonpath} if args.pythonpath else {}
    return V2SyncProcess(config, stop_timeout=EXIT_WATCH, expect_exit_code=None, env=env).start()


def _scheduled_requests(args: argparse.Namespace, proxy: int, origin: int,
                        start: float) -> List[Optional[float]]:
    """``args.requests`` fresh requests, one every ``args.spacing`` s from ``start``."""
    results: List[Optional[float]] = [None] * args.requests
    phases: List[List[float]] = [[] for _ in range(args.requests)]

    def one(i: int) -> None:
        try:
            results[i] = timed_request(proxy, origin, phases[i])
        except OSError as e:
            print(f"request {i} failed: {e}")

    threads = []
    for i in range(args.requests):
        time.sleep(max(start + i * args.spacing - time.monotonic(), 0.0))
        threads.append(threading.Thread(target=one, args=(i,)))
        threads[-1].start()
    for thread in threads:
        thread.join(IO_TIMEOUT * 2)
    if args.phases:
        print("phases (ms to: connected, SOCKS method reply, CONNECT reply, echo):", phases)
    return results


def _watch_threads(pid: int, baseline: int, start: float) -> Tuple[Optional[float], Optional[float], int]:
    """Seconds (from ``start``) until threads <= baseline + MAX_IDLE, then <= baseline."""
    near = exact = None
    peak = 0
    while time.monotonic() - start < THREAD_WATCH:
        threads = process_thread_count(pid)
        peak = max(peak, threads)
        if near is None and threads <= baseline + MAX_IDLE_WORKERS:
            near = time.monotonic() - start
        if threads <= baseline:
            exact = time.monotonic() - start
            break
        time.sleep(THREAD_POLL)
    return near, exact, peak


def _warm_up(proxy: int, origin: int) -> None:
    for _ in range(5):
        timed_request(proxy, origin)
    time.sleep(2.5)  # parked workers from the warm-up expire (IDLE_TIMEOUT = 2 s)


def _start_sampler(args: argparse.Namespace, pid: int) -> None:
    if args.sample:
        subprocess.Popen([*args.sample.split(), str(pid)])
        time.sleep(SAMPLER_START)  # its own start-up is over before the close


def run_massclose(args: argparse.Namespace, proxy: ConfigProcess, port: int, origin: int) -> float:
    _warm_up(port, origin)
    baseline = process_thread_count(proxy.pid)
    holder = _child("--holder", str(port), str(origin), str(args.n))
    try:
        print(holder.stdout.readline().strip(), "| proxy threads", process_thread_count(proxy.pid),
              "| baseline", baseline)
        time.sleep(1.0)
        _start_sampler(args, proxy.pid)
        holder.stdin.write("close\n")
        holder.stdin.flush()
        print(holder.stdout.readline().strip())
        start = time.monotonic()
        watched: list = []
        watcher = threading.Thread(target=lambda: watched.append(
            _watch_threads(proxy.pid, baseline, start)))
        watcher.start()
        results = _scheduled_requests(args, port, origin, start)
        watcher.join(THREAD_WATCH + 5)
        near, exact, peak = watched[0]
        print(f"threads: peak {peak}, back to baseline+{MAX_IDLE_WORKERS} after "
              f"{_secs(near)}, to baseline ({baseline}) after {_secs(exact)}")
        return _report_requests(results)
    finally:
        holder.stdin.close()
        holder.wait(30)


def _secs(value: Optional[float]) -> str:
    return f"never (watched {THREAD_WATCH:.0f} s)" if value is None else f"{value:.2f} s"


def _report_requests(results: List[Optional[float]]) -> float:
    """Print the requests' figures; returns their p99 in ms (inf if none was answered)."""
    done = sorted(r * 1000 for r in results if r is not None)
    failed = len(results) - len(done)
    if not done:
        print(f"requests: all {failed} failed")
        return float("inf")
    p99 = done[min(len(done) - 1, round(0.99 * (len(done) - 1)))]
    print(f"requests: {len(done)} answered, {failed} failed; p50 {statistics.median(done):.1f} ms, "
          f"p99 {p99:.1f} ms, max {done[-1]:.1f} ms; each: "
          + " ".join(f"{r * 1000:.0f}" if r is not None else "x" for r in results))
    return p99


def run_sigterm(args: argparse.Namespace, proxy: ConfigProcess, port: int, origin: int) -> float:
    """Seconds from SIGTERM to the proxy's exit, with every connection busy."""
    holder = _child("--holder", str(port), str(origin), str(args.n), "--busy")
    try:
        print(holder.stdout.readline().strip(), "| proxy threads", process_thread_count(proxy.pid))
        time.sleep(BUSY_SECONDS)
        _start_sampler(args, proxy.pid)
        start = time.monotonic()
        os.kill(proxy.pid, signal.SIGTERM)
        while proxy.returncode is None and time.monotonic() < start + EXIT_WATCH:
            time.sleep(0.01)
        elapsed = time.monotonic() - start
        print(f"SIGTERM with {args.n} busy connections: exit code {proxy.returncode} after "
              f"{elapsed:.2f} s (sent at {time.time() - elapsed:.3f} by the clock)")
        for line in proxy.log_text().splitlines()[-MAX_LOG_LINES:]:
            print("  proxy:", line[:200])
        return elapsed
    finally:
        holder.stdin.close()
        holder.wait(30)


def run_once(args: argparse.Namespace) -> float:
    origin = _child("--origin")
    try:
        origin_port = int(origin.stdout.readline())
        port = free_port()
        proxy = _proxy(args, port)
        try:
            run = run_massclose if args.mode == "massclose" else run_sigterm
            return run(args, proxy, port, origin_port)
        finally:
            proxy.stop(check=False)
    finally:
        origin.stdin.close()
        origin.wait(30)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", choices=("massclose", "sigterm"), default="massclose")
    parser.add_argument("-n", type=int, default=2000, help="held connections (default 2000)")
    parser.add_argument("--impl", choices=("v2sync", "v2ray"), default="v2sync")
    parser.add_argument("--rounds", type=int, default=1, help="repeat, then summarise")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--spacing", type=float, default=0.05)
    parser.add_argument("--phases", action="store_true", help="print each request's steps")
    parser.add_argument("--pythonpath", help="prepended to v2sync's PYTHONPATH (a "
                        "sitecustomize.py there can change the interpreter's settings)")
    parser.add_argument("--sample", metavar="CMD", help="run CMD PID (a profiler) just before "
                        "the close or the SIGTERM")
    parser.add_argument("--origin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--holder", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.origin:
        asyncio.run(_origin_main())
    elif args.holder:
        holder_main(*args.holder, busy=args.busy)
    else:
        figures = [run_once(args) for _ in range(args.rounds)]
        if args.rounds > 1:
            unit = "ms (p99 of the requests)" if args.mode == "massclose" else "s to exit"
            print(f"{args.rounds} rounds, {unit}: " + ", ".join(f"{f:.1f}" for f in figures)
                  + f"; median {statistics.median(figures):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
