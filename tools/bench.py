#!/usr/bin/env python3
"""Benchmark v2sync against the real v2ray: the same work, the same client, in one run.

    python tools/bench.py relay|mux|vmess|ss|tls|ws|vless|trojan|route|udp [--quick] [--only v2sync|v2ray] [--strict]
    python tools/bench.py idle|massclose|stalled|burst [--idle N] [--massclose M] [...]
    python tools/bench.py udp [--quick]   (UDP through VMess: tools/bench_udp.py)
    python tools/bench.py mixed [--quick] (v2sync or v2ray client -> v2ray server over TLS, WS+TLS)
    python tools/bench.py all
    python tools/bench.py relay --stats   # every traffic counter on (the cost of counting)

A scenario is a function ``(BenchOptions) -> List[Row]`` in ``SCENARIOS``. Most scenarios
only differ in the proxy chain they start, so they call ``compare_chains`` with a function
that builds the chain's configs around a SOCKS5 entry port; see ``scenario_relay``.

Measured through the chain's SOCKS5 entry (a raw client below, no PySocks overhead), every
chain of a comparison up at once and the phases alternating between them (``measure_columns``):
  - bulk download MiB/s from a BulkSource (best of 3);
  - new connection + 1 KiB echo round trip, sequential, p50 and p99 ms;
  - RSS growth of the chain's processes per held idle connection (KiB).
The load scenarios (idle, massclose, stalled, burst: a SOCKS5 inbound -> freedom under many
connections at once) run their clients and origin in processes of their own, and read the
proxy's threads and RSS in /proc; see tools/bench_load.py. Everything runs on loopback;
every loop is bounded in count and time; every process is stopped in a ``finally``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import (Callable, ContextManager, Dict, Iterator, List, Mapping, Optional,
                    Sequence, Tuple, TypeVar, Union)

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # reuse the test harness (support.*)
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from support.certs import Pki, make_pki  # noqa: E402
from support.peers import MIB, SINK_DONE, BulkSink, BulkSource, TcpEchoServer, free_port  # noqa: E402
from support.procs import ConfigProcess, V2RayProcess, V2SyncProcess, socks_freedom_config  # noqa: E402
from support.resources import process_rss_kib, process_thread_count  # noqa: E402

import bench_load  # noqa: E402
from bench_load import (CLIENT_TIMEOUT, ECHO_TIMEOUT, BenchError, Figures,  # noqa: E402
                        LoadSizes, Refused, echo_request, recv_exact, socks5_connect)
from v2sync.common.affinity import NAMESPACE_ENV_VAR  # noqa: E402

IMPLEMENTATIONS = ("v2sync", "v2ray")

RECV_BUFFER = 4 * MIB
# v2ray 4.34's VMess server checks each AuthID against two cuckoo filters
# (common/antireplay/replayfilter.go). Their false positives refuse about one fresh
# connection in 2,000-3,000 as "invalid user > replayed request" (its info log says so),
# then drain and close it: the client sees EOF, or a stall while fewer bytes than the
# drain size were sent. A chain may lose this many connections before its run is void;
# each one is printed, counted in a row of its own, and retried. Wrong or truncated data
# is never retried. v2sync's filter is an exact set: it refuses none.
MAX_FAILED_CONNECTIONS = 5
DOWNLOAD_DEADLINE = 300.0
DOWNLOAD_REQUEST = b"\n"
PHASE_DEADLINE = 180.0
SETTLE_SECONDS = 1.0
WARMUP_CONNECTIONS = 5
ORIGIN_DRAIN_SECONDS = 15.0
# Upstream legs linger after the client's close (uplinkOnly, 1 s): room for them at the origin.
LINGERING_CONNECTIONS = 1024
# Downloads and uploads of every chain of a comparison in turn, each leg lingering up to 1 s.
BULK_CONNECTIONS = 16
PROXY_READY_TIMEOUT = 30.0  # a cold Python start with every protocol imported is slow

T = TypeVar("T")


@dataclass(frozen=True)
class BenchOptions:
    quick: bool
    implementations: Tuple[str, ...]
    connections: int
    load: LoadSizes = LoadSizes()
    stats: bool = False  # --stats: every traffic counter on (issue 18's cost check)

    @property
    def bulk_bytes(self) -> int:
        return (64 if self.quick else 256) * MIB

    @property
    def latency_rounds(self) -> int:
        return 100 if self.quick else 300


@dataclass(frozen=True)
class Target:
    """A pass condition: on the v2sync/v2ray ratio, or on v2sync's own value."""

    kind: str  # "ratio>=", "ratio<=", "value<=" or "value>="
    limit: float

    def describe(self) -> str:
        what, op = self.kind[:-2], self.kind[-2:]
        return f"{what} {op} {self.limit:g}" + ("x" if what == "ratio" else "")

    def passed(self, row: "Row") -> Optional[bool]:
        value = row.ratio() if self.kind.startswith("ratio") else row.values.get("v2sync")
        if value is None:
            return None
        return value >= self.limit if self.kind.endswith(">=") else value <= self.limit


@dataclass(frozen=True)
class AllOf:
    """Several pass conditions on one row, as when two issues set a target on one figure."""

    targets: Tuple[Target, ...]

    def describe(self) -> str:
        return ", ".join(target.describe() for target in self.targets)

    def passed(self, row: "Row") -> Optional[bool]:
        verdicts = [target.passed(row) for target in self.targets]
        if False in verdicts:
            return False
        return None if None in verdicts else True


@dataclass(frozen=True)
class Row:
    metric: str
    values: Mapping[str, Optional[float]]
    target: Optional[Union[Target, AllOf]] = None

    def ratio(self) -> Optional[float]:
        ours, theirs = self.values.get("v2sync"), self.values.get("v2ray")
        if ours is None or theirs is None or theirs == 0:
            return None
        return ours / theirs


@dataclass
class ChainResult:
    download_mibps: Optional[float] = None
    upload_mibps: Optional[float] = None  # measured by the mixed scenario only
    latency_p50_ms: Optional[float] = None
    latency_p99_ms: Optional[float] = None
    kib_per_connection: Optional[float] = None
    threads_when_held: Optional[float] = None
    failed_connections: Optional[float] = None
    errors: List[str] = field(default_factory=list)


class FailureBudget:
    """Counts connections that failed in one chain's run; past the budget, the run fails."""

    def __init__(self, limit: int = MAX_FAILED_CONNECTIONS):
        self.limit = limit
        self.count = 0

    def retry(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, again after each failure the budget allows."""
        while True:
            try:
                return attempt()
            except (Refused, OSError) as error:  # OSError: reset, refused, timed out
                self.count += 1
                what = f"{type(error).__name__}: {error}"
                if self.count > self.limit:
                    raise BenchError(f"{self.count} connections failed; the last: {what}") from error
                print(f"  connection failed ({what}); retrying", file=sys.stderr, flush=True)


# -- measurements --------------------------------------------------------------------------

def measure_download(proxy_port: int, source: BulkSource) -> float:
    """MiB/s of one download of ``source.total_bytes`` through the proxy, connect included."""
    buffer = memoryview(bytearray(RECV_BUFFER))
    total = 0
    started = time.perf_counter()
    with socks5_connect(proxy_port, source.address) as sock:
        # A request byte (the source ignores it): an HTTP outbound waits for the client's
        # first bytes before it dials, as 4.34's does, so a silent client would stall it;
        # 4.34's Trojan client sends its header only with the first payload (client.go).
        sock.sendall(DOWNLOAD_REQUEST)
        while total < source.total_bytes:
            received = sock.recv_into(buffer)
            if received == 0:
                break
            total += received
            if time.perf_counter() - started > DOWNLOAD_DEADLINE:
                raise BenchError(f"download exceeded {DOWNLOAD_DEADLINE} s")
    elapsed = time.perf_counter() - started
    if total != source.total_bytes:
        error = Refused if total == 0 else BenchError
        raise error(f"downloaded {total} of {source.total_bytes} bytes")
    return total / MIB / elapsed


UPLOAD_BLOCK = memoryview(bytes(range(256)) * 4096)  # 1 MiB, sent again and again


def measure_upload(proxy_port: int, sink: BulkSink) -> float:
    """MiB/s of one upload of ``sink.total_bytes`` through the proxy, connect included, until
    the sink says it has every byte."""
    total = sink.total_bytes
    started = time.perf_counter()
    with socks5_connect(proxy_port, sink.address) as sock:
        sent = 0
        while sent < total:
            block = UPLOAD_BLOCK[:min(len(UPLOAD_BLOCK), total - sent)]
            sock.sendall(block)
            sent += len(block)
            if time.perf_counter() - started > DOWNLOAD_DEADLINE:
                raise BenchError(f"upload exceeded {DOWNLOAD_DEADLINE} s")
        if sock.recv(len(SINK_DONE)) != SINK_DONE:
            raise BenchError("the sink did not confirm the upload")
    return total / MIB / (time.perf_counter() - started)


def echo_once(proxy_port: int, echo: TcpEchoServer) -> None:
    echo_request(proxy_port, echo.address)


def timed_echo(proxy_port: int, echo: TcpEchoServer) -> float:
    started = time.perf_counter()
    echo_once(proxy_port, echo)
    return (time.perf_counter() - started) * 1000


def measure_latency(proxy_port: int, echo: TcpEchoServer, rounds: int,
                    budget: FailureBudget) -> Tuple[float, float]:
    """p50 and p99 ms of connect + SOCKS handshake + 1 KiB echo + close, ``rounds`` times
    (a failed connection is retried and not sampled)."""
    samples: List[float] = []
    for _ in range(rounds):
        sample_latency(samples, proxy_port, echo, budget)
    return latency_figures(samples)


def sample_latency(samples: List[float], proxy_port: int, echo: TcpEchoServer,
                   budget: FailureBudget) -> None:
    """One more sample into ``samples``; fails once they add up to PHASE_DEADLINE."""
    samples.append(budget.retry(lambda: timed_echo(proxy_port, echo)))
    if sum(samples) > PHASE_DEADLINE * 1000:
        raise BenchError(f"latency phase exceeded {PHASE_DEADLINE} s")


def latency_figures(samples: Sequence[float]) -> Tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples), cuts[98]


def open_idle_connection(proxy_port: int, echo: TcpEchoServer) -> socket.socket:
    sock = socks5_connect(proxy_port, echo.address, timeout=ECHO_TIMEOUT)
    try:
        sock.sendall(b"ping")  # the echo proves the upstream leg exists too
        if recv_exact(sock, 4) != b"ping":
            raise BenchError("echo mismatch while opening idle connections")
    except BaseException:
        sock.close()
        raise
    return sock


def measure_idle_memory(proxy_port: int, echo: TcpEchoServer, pids: Sequence[int],
                        count: int, budget: FailureBudget) -> Tuple[float, float]:
    """RSS growth per held, established, idle connection (KiB), and the chain's OS threads."""
    time.sleep(SETTLE_SECONDS)
    before = sum(process_rss_kib(pid) for pid in pids)
    held: List[socket.socket] = []
    deadline = time.monotonic() + PHASE_DEADLINE
    try:
        for _ in range(count):
            held.append(budget.retry(lambda: open_idle_connection(proxy_port, echo)))
            if time.monotonic() > deadline:
                raise BenchError(f"opening {count} connections exceeded {PHASE_DEADLINE} s")
        time.sleep(SETTLE_SECONDS)
        after = sum(process_rss_kib(pid) for pid in pids)
        threads = sum(process_thread_count(pid) for pid in pids)
    finally:
        for sock in held:
            sock.close()
        wait_for_idle_origin(echo)
    return (after - before) / count, float(threads)


def wait_for_idle_origin(echo: TcpEchoServer) -> None:
    """Wait (bounded) until the proxy has closed its upstream legs to ``echo``.

    v2ray keeps an upstream leg for uplinkOnly (1 s) after the client's close, so the next
    phase would otherwise start with hundreds of lingering connections.
    """
    deadline = time.monotonic() + ORIGIN_DRAIN_SECONDS
    while echo.active_connections > 0 and time.monotonic() < deadline:
        time.sleep(0.05)


# -- running chains ------------------------------------------------------------------------

ChainBuilder = Callable[[int], List[Dict[str, object]]]


# v2sync processes claim their CPUs among this run's own (v2sync/common/affinity.py): pinned
# as on a machine of their own, whatever other v2sync processes on the host hold.
BENCH_CPU_NAMESPACE = f"bench-{os.getpid()}"


def make_process(implementation: str, config: Mapping[str, object]) -> ConfigProcess:
    if implementation == "v2ray":
        return V2RayProcess(config, ready_timeout=PROXY_READY_TIMEOUT)
    return V2SyncProcess(config, ready_timeout=PROXY_READY_TIMEOUT,
                         env={NAMESPACE_ENV_VAR: BENCH_CPU_NAMESPACE})


@contextlib.contextmanager
def running_chain(implementation: str, configs: Sequence[Mapping[str, object]],
                  errors: List[str]) -> Iterator[List[ConfigProcess]]:
    """Start every config in order (servers first), yield the processes, always stop them all."""
    processes: List[ConfigProcess] = []
    try:
        for config in configs:
            process = make_process(implementation, config)
            processes.append(process)
            process.start()
        yield processes
    finally:
        for process in reversed(processes):
            try:
                process.stop()
            except AssertionError as error:  # v2sync exited non-zero or ignored SIGTERM
                errors.append(f"{implementation} stop: {error}")


# -- chains side by side -------------------------------------------------------------------
# Every chain of a comparison runs at once and the phases alternate between them: latency
# in blocks of LATENCY_BLOCK samples (the order reversed each round), downloads round by
# round. The machine's own drift (v2ray alone varies by 30% from one minute to the next
# here) then falls on every column alike. Only one chain carries traffic at any moment; an idle chain costs
# no measurable CPU (an idle v2sync pair: 0.0 ms/s; its timer wheel wakes twice a second).

ChainStarter = Callable[[int, List[str]], ContextManager[List[ConfigProcess]]]
# Latency samples are taken in blocks of this many per chain, the blocks alternating: each
# implementation serves a run of connections with its code and data warm in the CPU's
# caches, as a server does, while a slow minute still falls on both. (Sample by sample,
# each connection found the other chain's processes in the caches; trojan p50, three
# interleaved runs each: 1.12-1.32x sample by sample, 1.13-1.22x in blocks of 25.)
LATENCY_BLOCK = 25


@dataclass
class Column:
    """One chain of a comparison: its column's label, how it starts around an entry port
    (appending stop errors to the list), and what it measured."""

    label: str
    start: ChainStarter
    result: ChainResult = field(default_factory=ChainResult)


@dataclass
class _LiveChain:
    column: Column
    port: int
    pids: List[int]
    budget: FailureBudget = field(default_factory=FailureBudget)
    samples: List[float] = field(default_factory=list)  # latency, ms
    walls: List[float] = field(default_factory=list)  # mux bursts, ms


def same_chain(implementation: str, build: ChainBuilder) -> ChainStarter:
    """Every config of ``build`` on ``implementation``."""
    return lambda port, errors: running_chain(implementation, build(port), errors)


def mixed_chain(client: str, server: str, build: ChainBuilder) -> ChainStarter:
    """``build``'s [server, client] pair on two implementations."""
    @contextlib.contextmanager
    def start(port: int, errors: List[str]) -> Iterator[List[ConfigProcess]]:
        server_config, client_config = build(port)
        with running_chain(server, [server_config], errors) as servers, \
                running_chain(client, [client_config], errors) as clients:
            yield servers + clients
    return start


def measure_columns(columns: Sequence[Column], options: BenchOptions, bulk: BulkSource,
                    echo: TcpEchoServer, sink: Optional[BulkSink] = None,
                    middle: Optional[Callable[[List[_LiveChain]], None]] = None
                    ) -> List[_LiveChain]:
    """The standard measurements through each column's SOCKS5 entry, side by side: warm-up,
    ``middle`` (by default memory, one chain at a time, then latency), downloads (and
    uploads with ``sink``). A chain that fails keeps what it measured and leaves the rest of
    the run; its error is kept. Returns every chain that started."""
    with contextlib.ExitStack() as stack:
        live = _start_columns(stack, columns)
        chains = list(live)
        _each(live, lambda chain: _warm_up(chain, echo))
        if middle is None:
            _each(live, lambda chain: _measure_memory(chain, options, echo))
            _measure_latencies(live, options, echo)
        else:
            middle(live)
        for _ in range(3):
            _each(live, lambda chain: _best(chain, "download_mibps", chain.budget.retry(
                lambda: measure_download(chain.port, bulk))))
        for _ in range(3 if sink is not None else 0):
            _each(live, lambda chain: _best(chain, "upload_mibps", chain.budget.retry(
                lambda: measure_upload(chain.port, sink))))
    for chain in chains:
        chain.column.result.failed_connections = float(chain.budget.count)
    for column in columns:
        for error in column.result.errors:
            print(f"  ERROR {error}", file=sys.stderr)
    return chains


def _start_columns(stack: contextlib.ExitStack, columns: Sequence[Column]) -> List[_LiveChain]:
    live = []
    for column in columns:
        print(f"  starting {column.label} ...", file=sys.stderr, flush=True)
        port = free_port()  # after the previous chain bound its ports
        try:
            processes = stack.enter_context(column.start(port, column.result.errors))
        except (BenchError, OSError, RuntimeError, TimeoutError) as error:
            column.result.errors.append(f"{column.label}: {type(error).__name__}: {error}")
            continue
        live.append(_LiveChain(column, port, [process.pid for process in processes]))
    return live


def _each(live: List[_LiveChain], measure: Callable[[_LiveChain], None],
          reverse: bool = False) -> None:
    """``measure`` each live chain in turn; a chain that fails leaves ``live``."""
    for chain in (live[::-1] if reverse else list(live)):
        try:
            measure(chain)
        except (BenchError, OSError, RuntimeError, TimeoutError) as error:
            label = chain.column.label
            chain.column.result.errors.append(f"{label}: {type(error).__name__}: {error}")
            live.remove(chain)


def _warm_up(chain: _LiveChain, echo: TcpEchoServer) -> None:
    for _ in range(WARMUP_CONNECTIONS):  # lazy imports and first-use allocations
        chain.budget.retry(lambda: echo_once(chain.port, echo))


def _measure_memory(chain: _LiveChain, options: BenchOptions, echo: TcpEchoServer) -> None:
    # Before any bulk phase, on processes that have not yet held buffers they may keep.
    result = chain.column.result
    result.kib_per_connection, result.threads_when_held = measure_idle_memory(
        chain.port, echo, chain.pids, options.connections, chain.budget)


def _measure_latencies(live: List[_LiveChain], options: BenchOptions,
                       echo: TcpEchoServer) -> None:
    rounds = options.latency_rounds
    for block in range(-(-rounds // LATENCY_BLOCK)):
        size = min(LATENCY_BLOCK, rounds - block * LATENCY_BLOCK)
        _each(live, lambda chain: _sample_block(chain, echo, size), reverse=bool(block % 2))
    for chain in live:
        result = chain.column.result
        result.latency_p50_ms, result.latency_p99_ms = latency_figures(chain.samples)


def _sample_block(chain: _LiveChain, echo: TcpEchoServer, size: int) -> None:
    for _ in range(size):
        sample_latency(chain.samples, chain.port, echo, chain.budget)


def _best(chain: _LiveChain, attribute: str, value: float) -> None:
    best = getattr(chain.column.result, attribute)
    setattr(chain.column.result, attribute, value if best is None else max(best, value))


@dataclass(frozen=True)
class ChainTargets:
    """Pass conditions of the standard rows (issues 2 and 3 by default)."""

    bulk_ratio: float = 1.0
    p50_ratio: float = 1.5
    memory_ratio: Optional[float] = None  # per held connection, v2sync/v2ray


DEFAULT_TARGETS = ChainTargets()
# Issue 19 tightened issues 2 and 3's targets on the relay, VMess and VMess-over-TLS chains:
# p50 <= 1.2x everywhere, the relay's bulk lead kept at 1.5x and VMess's at 1.2x, and memory
# per held connection <= 1.5x on the relay (besides issue 2's 96 KiB) and the VMess chain.
RELAY_TARGETS = ChainTargets(bulk_ratio=1.5, p50_ratio=1.2, memory_ratio=1.5)
VMESS_TARGETS = ChainTargets(bulk_ratio=1.2, p50_ratio=1.2, memory_ratio=1.5)
TLS_TARGETS = ChainTargets(p50_ratio=1.2)


def _memory_target(limit_kib: Optional[float], ratio: Optional[float]) -> Optional[Union[Target, AllOf]]:
    targets = tuple(([Target("value<=", limit_kib)] if limit_kib is not None else []) +
                    ([Target("ratio<=", ratio)] if ratio is not None else []))
    return targets[0] if len(targets) == 1 else AllOf(targets) if targets else None


def compare_chains(options: BenchOptions, build: ChainBuilder,
                   memory_limit_kib: Optional[float] = None,
                   targets: ChainTargets = DEFAULT_TARGETS) -> List[Row]:
    """Run the standard measurements through ``build(entry_port)`` for each implementation.

    ``memory_limit_kib`` is an absolute limit on v2sync's figure (the bare relay's, issue 2);
    ``targets`` holds the ratios against v2ray's."""
    if options.stats:
        build = _counting(build)
    columns = [Column(name, same_chain(name, build)) for name in options.implementations]
    with BulkSource(options.bulk_bytes, max_connections=BULK_CONNECTIONS, timeout=CLIENT_TIMEOUT) as bulk, \
            TcpEchoServer(max_connections=options.connections + LINGERING_CONNECTIONS, timeout=PHASE_DEADLINE) as echo:
        measure_columns(columns, options, bulk, echo)
    results = {column.label: column.result for column in columns}

    def pick(attribute: str) -> Dict[str, Optional[float]]:
        return {name: getattr(result, attribute) for name, result in results.items()}

    return [
        Row(f"bulk download {options.bulk_bytes // MIB} MiB, best of 3 (MiB/s)", pick("download_mibps"),
            Target("ratio>=", targets.bulk_ratio)),
        Row(f"connect + 1 KiB echo p50, n={options.latency_rounds} (ms)", pick("latency_p50_ms"),
            Target("ratio<=", targets.p50_ratio)),
        Row(f"connect + 1 KiB echo p99, n={options.latency_rounds} (ms)", pick("latency_p99_ms")),
        Row(f"RSS per held idle connection, n={options.connections} (KiB)", pick("kib_per_connection"),
            _memory_target(memory_limit_kib, targets.memory_ratio)),
        Row(f"OS threads with {options.connections} connections held", pick("threads_when_held")),
        Row("connections that failed and were retried", pick("failed_connections"),
            Target("value<=", 0)),  # v2sync refuses none; the v2ray column is context
    ]


STATS_SYSTEM = {"statsInboundUplink": True, "statsInboundDownlink": True,
                "statsOutboundUplink": True, "statsOutboundDownlink": True}


def with_stats(config: Dict[str, object]) -> Dict[str, object]:
    """``config`` with every counter on (--stats): a ``stats`` section, the policy's system
    and level-0 user switches, a tag on each handler and an email on each VMess user, so
    each relayed chunk is counted on the inbound, the outbound and the user."""
    counted = dict(config)
    counted["stats"] = {}
    policy = dict(counted.get("policy") or {})  # type: ignore[arg-type]
    levels = dict(policy.get("levels") or {})
    levels["0"] = {**levels.get("0", {}), "statsUserUplink": True, "statsUserDownlink": True}
    policy.update(levels=levels, system=STATS_SYSTEM)
    counted["policy"] = policy
    for kind in ("inbounds", "outbounds"):
        handlers = []
        for i, handler in enumerate(counted.get(kind) or []):  # type: ignore[arg-type]
            handler = {"tag": f"{kind[:-1]}-{i}", **handler}
            clients = (handler.get("settings") or {}).get("clients")
            if clients:
                handler["settings"] = {**handler["settings"], "clients": [
                    {"email": f"user-{j}@bench", **c} for j, c in enumerate(clients)]}
            handlers.append(handler)
        counted[kind] = handlers
    return counted


def _counting(build: ChainBuilder) -> ChainBuilder:
    return lambda port: [with_stats(config) for config in build(port)]


# -- scenarios -----------------------------------------------------------------------------

RELAY_MEMORY_LIMIT_KIB = 96.0  # per held connection, from RSS (issue 2)


def scenario_relay(options: BenchOptions) -> List[Row]:
    """SOCKS5 inbound on 127.0.0.1 -> freedom: the bare relay path; then the same through the
    SOCKS and the HTTP outbound into a second process's SOCKS / HTTP inbound (socks-out,
    http-out: both processes of one implementation)."""
    rows = compare_chains(options, lambda port: [socks_freedom_config(port, access="none")],
                          RELAY_MEMORY_LIMIT_KIB, RELAY_TARGETS)
    for protocol in ("socks", "http"):  # context rows: the issue sets no target for them
        rows += [Row(f"[{protocol}-out] {row.metric}", row.values)
                 for row in compare_chains(options, functools.partial(chained_configs, protocol))]
    return rows


def chained_configs(protocol: str, entry_port: int) -> List[Dict[str, object]]:
    """[server, client]: a ``protocol`` inbound -> freedom, and SOCKS5 on ``entry_port`` ->
    the ``protocol`` outbound to it."""
    server_port = free_port()
    server = socks_freedom_config(server_port, access="none")
    if protocol == "http":
        server["inbounds"] = [{"tag": "http-in", "listen": "127.0.0.1", "port": server_port,
                               "protocol": "http", "settings": {}}]
    client = socks_freedom_config(entry_port, access="none")
    client["outbounds"] = [{"protocol": protocol, "settings": {"servers": [
        {"address": "127.0.0.1", "port": server_port}]}}]
    return [server, client]


# SOCKS5 -> VMess -> VMess -> freedom. One fixed id: the bench needs no secrecy.
VMESS_BENCH_ID = "5a3e2f1c-8b7d-4e6a-9c0b-1d2e3f4a5b6c"
VMESS_BENCH_SECURITY = "aes-128-gcm"
VMESS_MIXED_PAIRS = (("v2sync", "v2ray"), ("v2ray", "v2sync"))  # (client, server)


def vmess_pair_configs(entry_port: int, server_stream: Optional[Dict[str, object]] = None,
                       client_stream: Optional[Dict[str, object]] = None
                       ) -> List[Dict[str, object]]:
    """[server, client]: vmess inbound -> freedom, and SOCKS5 on ``entry_port`` -> vmess outbound
    (aes-128-gcm, alterId 0: the AEAD header), over the given streamSettings if any. Servers
    first, as ``running_chain`` wants."""
    vmess_port = free_port()
    log = {"loglevel": "warning", "access": "none"}
    inbound: Dict[str, object] = {
        "listen": "127.0.0.1", "port": vmess_port, "protocol": "vmess",
        "settings": {"clients": [{"id": VMESS_BENCH_ID, "alterId": 0}]}}
    server = {"log": log, "outbounds": [{"protocol": "freedom", "settings": {}}],
              "inbounds": [inbound]}
    user = {"id": VMESS_BENCH_ID, "alterId": 0, "security": VMESS_BENCH_SECURITY}
    client = socks_freedom_config(entry_port, access="none")
    outbound: Dict[str, object] = {"protocol": "vmess", "settings": {"vnext": [
        {"address": "127.0.0.1", "port": vmess_port, "users": [user]}]}}
    if server_stream:
        inbound["streamSettings"] = server_stream
    if client_stream:
        outbound["streamSettings"] = client_stream
    client["outbounds"] = [outbound]
    return [server, client]


@functools.lru_cache(maxsize=1)
def bench_pki() -> Pki:
    """A throwaway CA and server certificate for the TLS scenarios (removed at exit)."""
    directory = tempfile.TemporaryDirectory(prefix="v2sync-bench-pki-")
    _KEEP_ALIVE.append(directory)
    return make_pki(Path(directory.name))


_KEEP_ALIVE: List[tempfile.TemporaryDirectory] = []
WS_BENCH_PATH = "/bench"


def tls_streams() -> Tuple[Dict[str, object], Dict[str, object]]:
    pki = bench_pki()
    return ({"security": "tls", "tlsSettings": pki.server_tls()},
            {"security": "tls", "tlsSettings": pki.client_tls()})


def wss_streams() -> Tuple[Dict[str, object], Dict[str, object]]:
    server, client = tls_streams()
    ws = {"network": "ws", "wsSettings": {"path": WS_BENCH_PATH}}
    return {**ws, **server}, {**ws, **client}


def scenario_tls(options: BenchOptions) -> List[Row]:
    """SOCKS5 -> VMess over TLS -> VMess -> freedom (certificate verified against a test CA)."""
    return compare_chains(options, lambda port: vmess_pair_configs(port, *tls_streams()),
                          targets=TLS_TARGETS)


def scenario_ws(options: BenchOptions) -> List[Row]:
    """SOCKS5 -> VMess over WebSocket+TLS -> VMess -> freedom."""
    return compare_chains(options, lambda port: vmess_pair_configs(port, *wss_streams()))


# Issue 15's targets for VLESS and Trojan over TLS.
KEYED_TARGETS = ChainTargets(bulk_ratio=1.2, p50_ratio=1.3, memory_ratio=1.5)
TROJAN_BENCH_PASSWORD = "bench"


def keyed_pair_configs(protocol: str, entry_port: int) -> List[Dict[str, object]]:
    """[server, client]: a VLESS or Trojan inbound over TLS -> freedom, and SOCKS5 on
    ``entry_port`` -> the same protocol's outbound over TLS."""
    server_stream, client_stream = tls_streams()
    port = free_port()
    log = {"loglevel": "warning", "access": "none"}
    if protocol == "vless":
        settings: Dict[str, object] = {"decryption": "none",
                                       "clients": [{"id": VMESS_BENCH_ID}]}
        out: Dict[str, object] = {"vnext": [{"address": "127.0.0.1", "port": port, "users": [
            {"id": VMESS_BENCH_ID, "encryption": "none"}]}]}
    else:
        settings = {"clients": [{"password": TROJAN_BENCH_PASSWORD}]}
        out = {"servers": [{"address": "127.0.0.1", "port": port,
                            "password": TROJAN_BENCH_PASSWORD}]}
    server = {"log": log, "outbounds": [{"protocol": "freedom", "settings": {}}],
              "inbounds": [{"listen": "127.0.0.1", "port": port, "protocol": protocol,
                            "settings": settings, "streamSettings": server_stream}]}
    client = socks_freedom_config(entry_port, access="none")
    client["outbounds"] = [{"protocol": protocol, "settings": out,
                            "streamSettings": client_stream}]
    return [server, client]


def scenario_vless(options: BenchOptions) -> List[Row]:
    """SOCKS5 -> VLESS over TLS -> VLESS -> freedom."""
    return compare_chains(options, functools.partial(keyed_pair_configs, "vless"),
                          targets=KEYED_TARGETS)


def scenario_trojan(options: BenchOptions) -> List[Row]:
    """SOCKS5 -> Trojan over TLS -> Trojan -> freedom."""
    return compare_chains(options, functools.partial(keyed_pair_configs, "trojan"),
                          targets=KEYED_TARGETS)


def vmess_mixed_rows(options: BenchOptions, pure: Sequence[Row]) -> List[Row]:
    """One row per metric and mixed pair: the mixed pair in the v2sync column, the v2ray
    pair (from ``pure``) in the v2ray column, so the ratio is mixed / v2ray pair."""
    attributes = ("download_mibps", "latency_p50_ms", "latency_p99_ms", "kib_per_connection",
                  "threads_when_held", "failed_connections")  # the order of compare_chains' rows
    rows: List[Row] = []
    with BulkSource(options.bulk_bytes, max_connections=BULK_CONNECTIONS, timeout=CLIENT_TIMEOUT) as bulk, \
            TcpEchoServer(max_connections=options.connections + LINGERING_CONNECTIONS,
                          timeout=PHASE_DEADLINE) as echo:
        columns = [Column(f"{client} client + {server} server",
                          mixed_chain(client, server, vmess_pair_configs))
                   for client, server in VMESS_MIXED_PAIRS]
        measure_columns(columns, options, bulk, echo)
    for column in columns:
        rows += [Row(f"[{column.label}] {row.metric}",
                     {"v2sync": getattr(column.result, attribute), "v2ray": row.values.get("v2ray")})
                 for attribute, row in zip(attributes, pure)]
    return rows


def scenario_vmess(options: BenchOptions) -> List[Row]:
    """SOCKS5 -> VMess (aes-128-gcm, alterId 0) -> VMess -> freedom; then the mixed pairs."""
    rows = compare_chains(options, vmess_pair_configs, targets=VMESS_TARGETS)
    if set(options.implementations) == set(IMPLEMENTATIONS):
        rows += vmess_mixed_rows(options, rows)
    return rows


# The deployment most users run (issue 19): a client on the laptop, v2ray on the server.
def vless_pair_configs(entry_port: int, server_stream: Dict[str, object],
                       client_stream: Dict[str, object]) -> List[Dict[str, object]]:
    """[server, client] as ``vmess_pair_configs``, for VLESS over the given streams."""
    port = free_port()
    log = {"loglevel": "warning", "access": "none"}
    server = {"log": log, "outbounds": [{"protocol": "freedom", "settings": {}}],
              "inbounds": [{"listen": "127.0.0.1", "port": port, "protocol": "vless",
                            "settings": {"decryption": "none", "clients": [{"id": VMESS_BENCH_ID}]},
                            "streamSettings": server_stream}]}
    user = {"id": VMESS_BENCH_ID, "encryption": "none"}
    client = socks_freedom_config(entry_port, access="none")
    client["outbounds"] = [{"protocol": "vless", "streamSettings": client_stream, "settings": {
        "vnext": [{"address": "127.0.0.1", "port": port, "users": [user]}]}}]
    return [server, client]


# No Trojan row: 4.34's Trojan client writes its request header with the first payload
# (proxy/trojan/protocol.go ConnWriter), so a download whose server speaks first, as the
# bench's does, never starts through it.
MIXED_CHAINS: Tuple[Tuple[str, ChainBuilder], ...] = (
    ("VMess over TLS", lambda port: vmess_pair_configs(port, *tls_streams())),
    ("VMess over WS+TLS", lambda port: vmess_pair_configs(port, *wss_streams())),
    ("VLESS over TLS", lambda port: vless_pair_configs(port, *tls_streams())),
)
MIXED_SERVER = "v2ray"


def scenario_mixed(options: BenchOptions) -> List[Row]:
    """SOCKS5 -> VMess over TLS or WS+TLS, or VLESS over TLS -> a v2ray server -> freedom:
    the v2sync client in the v2sync column, the v2ray client in the v2ray column."""
    rows: List[Row] = []
    with BulkSource(options.bulk_bytes, max_connections=BULK_CONNECTIONS, timeout=CLIENT_TIMEOUT) as bulk, \
            BulkSink(options.bulk_bytes, max_connections=BULK_CONNECTIONS, timeout=CLIENT_TIMEOUT) as sink, \
            TcpEchoServer(max_connections=options.connections + LINGERING_CONNECTIONS,
                          timeout=PHASE_DEADLINE) as echo:
        for label, build in MIXED_CHAINS:
            print(f"  {label}, each client with a {MIXED_SERVER} server:", file=sys.stderr)
            columns = [Column(client, mixed_chain(client, MIXED_SERVER, build))
                       for client in options.implementations]
            measure_columns(columns, options, bulk, echo, sink)
            rows += mixed_rows(label, options, {column.label: column.result for column in columns})
    return rows


def mixed_rows(label: str, options: BenchOptions, results: Mapping[str, ChainResult]) -> List[Row]:
    def pick(attribute: str) -> Dict[str, Optional[float]]:
        return {name: getattr(result, attribute) for name, result in results.items()}

    size = options.bulk_bytes // MIB
    return [Row(f"[{label}] {metric}", pick(attribute), target) for metric, attribute, target in (
        (f"bulk download {size} MiB, best of 3 (MiB/s)", "download_mibps", Target("ratio>=", 1.0)),
        (f"bulk upload {size} MiB, best of 3 (MiB/s)", "upload_mibps", Target("ratio>=", 1.0)),
        (f"connect + 1 KiB echo p50, n={options.latency_rounds} (ms)", "latency_p50_ms",
         Target("ratio<=", 1.2)),
        (f"RSS per held idle connection, both processes, n={options.connections} (KiB)",
         "kib_per_connection", Target("ratio<=", 1.5)),
        (f"OS threads with {options.connections} connections held", "threads_when_held", None),
        ("connections that failed and were retried", "failed_connections", None),
    )]


# SOCKS5 -> Shadowsocks -> Shadowsocks -> freedom (issue 16). The method is a parameter:
# ``SS_BENCH_METHOD`` picks it (aes-128-gcm by default; any 4.34 method name works).
SS_BENCH_PASSWORD = "v2sync bench"


def ss_pair_configs(entry_port: int) -> List[Dict[str, object]]:
    """[server, client]: shadowsocks inbound -> freedom, and SOCKS5 on ``entry_port`` ->
    shadowsocks outbound. Servers first, as ``running_chain`` wants."""
    ss_port = free_port()
    method = os.environ.get("SS_BENCH_METHOD", "aes-128-gcm")
    log = {"loglevel": "warning", "access": "none"}
    inbound = {"listen": "127.0.0.1", "port": ss_port, "protocol": "shadowsocks",
               "settings": {"method": method, "password": SS_BENCH_PASSWORD}}
    server = {"log": log, "outbounds": [{"protocol": "freedom", "settings": {}}],
              "inbounds": [inbound]}
    client = socks_freedom_config(entry_port, access="none")
    client["outbounds"] = [{"protocol": "shadowsocks", "settings": {"servers": [
        {"address": "127.0.0.1", "port": ss_port, "method": method,
         "password": SS_BENCH_PASSWORD}]}}]
    return [server, client]


def scenario_ss(options: BenchOptions) -> List[Row]:
    """SOCKS5 -> Shadowsocks (SS_BENCH_METHOD, default aes-128-gcm) -> Shadowsocks -> freedom."""
    return [Row(row.metric, row.values, Target("ratio>=", 1.2)) if row.metric.startswith("bulk")
            else row for row in compare_chains(options, ss_pair_configs)]


# In-process router microbenchmark: the issue asks for < 50 us per decision with 10,000
# domain rules and 10,000 CIDRs. Both layouts are timed: the entries grouped in a few rules,
# and one rule per entry (20,000 rules), which a per-rule scan could not serve in time.
ROUTE_ENTRIES = 10_000
ROUTE_DECISION_LIMIT_US = 50.0
ROUTE_SEED = 5


def _route_workload(count: int) -> Tuple[List[str], List[str], List[str]]:
    """10,000 domain entries (a quarter each domain:, full:, keyword:, plain), 10,000 CIDRs
    (half IPv4 /16-/24, half IPv6 /32-/64) and ``count`` targets: half names (a third of
    them under a rule's name, the rest unknown), half IPv4/IPv6 addresses. Seeded."""
    import random
    rng = random.Random(ROUTE_SEED)

    def label() -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))

    prefixes = ("domain:", "full:", "keyword:", "")
    domains = [prefixes[i % 4] + (f"{label()}.{label()}.{rng.choice(('com', 'net', 'org'))}" if i % 4 < 2
                                  else label() + label()) for i in range(ROUTE_ENTRIES)]
    cidrs = [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.0/{rng.randint(16, 24)}"
             if i % 2 else f"2001:{rng.randrange(65536):x}:{rng.randrange(65536):x}::/{rng.randint(32, 64)}"
             for i in range(ROUTE_ENTRIES)]
    targets: List[str] = []
    for i in range(count):
        if i % 2:
            known = domains[rng.randrange(len(domains))].split(":")[-1]
            targets.append(f"www.{known}" if i % 3 else f"cdn{i}.example-{rng.randrange(10**6)}.com")
        elif i % 4:
            targets.append(f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}")
        else:
            targets.append(f"2001:{rng.randrange(65536):x}:{rng.randrange(65536):x}::{rng.randrange(65536):x}")
    return domains, cidrs, targets


def scenario_route(options: BenchOptions) -> List[Row]:
    """Router decisions in-process: 10k domain rules + 10k CIDRs (no v2ray comparison)."""
    from v2sync.app.router import Router, from_json
    from v2sync.common.net import Destination
    from v2sync.common.session import Session

    domains, cidrs, targets = _route_workload(5_000 if options.quick else 20_000)
    sessions = [Session("socks-in", Destination.tcp("192.168.1.20", 50000 + i % 10000),
                        Destination.tcp(host, 443)) for i, host in enumerate(targets)]
    field = lambda tag, **kw: {"type": "field", "outboundTag": tag, **kw}  # noqa: E731
    layouts = {
        "4 rules": [field("api", inboundTag=["api-in"]), field("block", domain=domains),
                    field("direct", ip=cidrs), field("dns", network="udp", port="53")],
        f"{2 * ROUTE_ENTRIES:,} one-entry rules": [field("block", domain=[d]) for d in domains]
        + [field("direct", ip=[c]) for c in cidrs],
    }
    rows: List[Row] = []
    for name, rules in layouts.items():
        started = time.perf_counter()
        router = Router(from_json({"rules": rules}), outbound_tags=["direct", "block", "api", "dns"])
        build_ms = (time.perf_counter() - started) * 1000
        latencies: List[float] = []
        matched = 0
        clock = time.perf_counter_ns
        started = time.perf_counter()
        for session in sessions:
            before = clock()
            matched += router.pick_route(session) is not None
            latencies.append((clock() - before) / 1000)
        elapsed = time.perf_counter() - started
        latencies.sort()
        print(f"  {name}: {matched}/{len(sessions)} sessions matched a rule", file=sys.stderr)
        rows += [
            Row(f"[{name}] config build (ms)", {"v2sync": build_ms}),
            Row(f"[{name}] decisions per second, n={len(sessions)}", {"v2sync": len(sessions) / elapsed}),
            Row(f"[{name}] decision p50 (us)", {"v2sync": latencies[len(latencies) // 2]}),
            Row(f"[{name}] decision p99 (us)", {"v2sync": latencies[int(len(latencies) * 0.99)]},
                Target("value<=", ROUTE_DECISION_LIMIT_US)),
        ]
    return rows + sniffing_overhead_rows(options)


def sniffing_overhead_rows(options: BenchOptions) -> List[Row]:
    """New-connection latency through v2sync (SOCKS -> freedom) with and without sniffing.

    The echo client speaks first, so sniffing costs one look at the first 1 KiB (random
    bytes: "unknown content" after one read), not the 2 x 100 ms timeout.
    """
    rows: List[Row] = []
    errors: List[str] = []
    results: Dict[str, Tuple[float, float]] = {}
    with TcpEchoServer(max_connections=LINGERING_CONNECTIONS, timeout=PHASE_DEADLINE) as echo:
        for label, sniffing in (("off", None), ("on", {"enabled": True,
                                                       "destOverride": ["http", "tls"]})):
            port = free_port()
            config = socks_freedom_config(port, access="none")
            if sniffing:
                config["inbounds"][0]["sniffing"] = sniffing
            budget = FailureBudget()
            with running_chain("v2sync", [config], errors):
                for _ in range(WARMUP_CONNECTIONS):
                    budget.retry(lambda: echo_once(port, echo))
                results[label] = measure_latency(port, echo, options.latency_rounds, budget)
            wait_for_idle_origin(echo)
    for error in errors:
        print(f"  ERROR {error}", file=sys.stderr)
    if len(results) == 2:
        rows.append(Row("connect + 1 KiB echo p50, sniffing off (ms)", {"v2sync": results["off"][0]}))
        rows.append(Row("connect + 1 KiB echo p50, sniffing on (ms)", {"v2sync": results["on"][0]}))
        rows.append(Row("sniffing overhead on p50 (ms)",
                        {"v2sync": results["on"][0] - results["off"][0]}))
    return rows


# -- load scenarios (tools/bench_load.py): a SOCKS5 inbound -> freedom, both defaults --------

LoadMeasure = Callable[[bench_load.LoadKit, LoadSizes, int, int, Figures], None]
# (figure key, row label, target): one row each, in this order
RowSpec = Sequence[Tuple[str, str, Optional[Target]]]
LOAD_P99_LIMIT_MS = 50.0
LOAD_RATIO_LIMIT = 1.5  # RSS (idle, stalled) and wall time (burst) against v2ray's
# Sampled peaks vary by a thread or two (a parked thread ending, the GC): the idle
# connections may add this many to what the same requests use without them.
IDLE_THREAD_SLACK = 2
TEARDOWN_LIMIT_SECONDS = 5.0


def measure_load(options: BenchOptions, measure: LoadMeasure) -> Dict[str, Figures]:
    """``measure`` against each implementation in turn, with one origin and one set of client
    processes; the figures taken before an error are kept."""
    results: Dict[str, Figures] = {}
    with bench_load.LoadKit() as kit:
        for implementation in options.implementations:
            print(f"  running {implementation} ...", file=sys.stderr, flush=True)
            figures: Figures = results.setdefault(implementation, {})
            errors: List[str] = []
            port = free_port()
            config = socks_freedom_config(port, access="none")
            try:
                with running_chain(implementation, [config], errors) as (proxy,):
                    measure(kit, options.load, port, proxy.pid, figures)
            except (BenchError, OSError, RuntimeError, TimeoutError) as error:
                errors.append(f"{implementation}: {type(error).__name__}: {error}")
            for message in errors:
                print(f"  ERROR {message}", file=sys.stderr)
            kit.wait_for_idle_origin()
    return results


def load_rows(results: Mapping[str, Figures], spec: RowSpec) -> List[Row]:
    return [Row(label, {name: figures.get(key) for name, figures in results.items()}, target)
            for key, label, target in spec]


def _request_rows(count: int, when: str) -> RowSpec:
    return [("answered", f"requests answered {when}, of {count}", Target("value>=", count)),
            ("p50_ms", f"request p50 {when} (ms)", None),
            ("p99_ms", f"request p99 {when} (ms)", Target("value<=", LOAD_P99_LIMIT_MS))]


def scenario_idle(options: BenchOptions) -> List[Row]:
    """N connections that never send a byte held on the SOCKS5 inbound, normal requests meanwhile."""
    n, requests = options.load.idle_connections, options.load.requests
    return load_rows(measure_load(options, bench_load.measure_idle), [
        ("idle_opened", f"idle connections established, of {n:,}", Target("value>=", n)),
        ("idle_closed", "idle connections the proxy closed while held", None),
        *_request_rows(requests, "while they are held"),
        ("p99_ms_alone", "request p99 with no idle connections (ms)", None),
        ("threads_baseline", "proxy threads at baseline", None),
        ("threads_held", f"proxy threads with {n:,} idle held", None),
        ("threads_alone", "proxy threads, peak during the requests alone", None),
        ("threads_during", "proxy threads, peak during the requests among idle", None),
        ("threads_added", "threads the idle connections add (peak among idle - alone)",
         Target("value<=", IDLE_THREAD_SLACK)),
        ("rss_added_mib", f"RSS added by {n:,} idle connections (MiB)",
         Target("ratio<=", LOAD_RATIO_LIMIT)),
    ])


def scenario_massclose(options: BenchOptions) -> List[Row]:
    """M relaying connections closed at once by the client; fresh requests during the teardown."""
    m, requests = options.load.massclose_connections, options.load.teardown_requests
    return load_rows(measure_load(options, bench_load.measure_massclose), [
        ("opened", f"connections opened and echoed 4 KiB, of {m:,}", Target("value>=", m)),
        ("threads_baseline", "proxy threads at baseline", None),
        ("threads_held", f"proxy threads with {m:,} held", None),
        ("close_ms", f"client's close of all {m:,} (ms)", None),
        *_request_rows(requests, "during the teardown"),
        ("seconds_to_baseline", "seconds until the proxy's threads are back to baseline",
         Target("value<=", TEARDOWN_LIMIT_SECONDS)),
        ("threads_later", f"proxy threads {bench_load.TEARDOWN_TARGET_SECONDS:g} s after the close", None),
    ])


def scenario_stalled(options: BenchOptions) -> List[Row]:
    """Downloads of an endless stream whose client never reads: the memory the proxy adds."""
    n = options.load.stalled_downloads
    return load_rows(measure_load(options, bench_load.measure_stalled), [
        ("opened", f"stalled downloads, of {n}", Target("value>=", n)),
        ("rss_added_mib", "RSS added once settled (MiB)", Target("ratio<=", LOAD_RATIO_LIMIT)),
        ("kib_per_download", "RSS added per stalled download (KiB)", None),
        ("seconds_to_settle", "seconds from the last one opened until RSS stopped growing", None),
        ("origin_sent_mib", "MiB the origin sent in all (proxy + kernel buffers)", None),
        ("streams_capped", f"streams that reached the origin's {bench_load.STREAM_CAP // MIB} MiB cap",
         Target("value<=", 0)),
    ])


# The burst is short (0.3-0.7 s) and v2ray's own time moves by 30% from one run to the
# next here, so each proxy runs it this many times, the rounds alternating between them.
BURST_ROUNDS = 3


def scenario_burst(options: BenchOptions) -> List[Row]:
    """B concurrent 64 KiB echoes through the SOCKS5 inbound: the wall time of the lot."""
    n, size = options.load.burst_echoes, options.load.burst_bytes
    results = measure_load_rounds(options, bench_load.measure_burst, BURST_ROUNDS, "seconds")
    return load_rows(results, [
        ("completed", f"echoes completed, of {n:,}", Target("value>=", n)),
        ("seconds", f"wall time, {n:,} x {size // 1024} KiB echoes, median of {BURST_ROUNDS} (s)",
         Target("ratio<=", LOAD_RATIO_LIMIT)),
        ("floor_seconds", "wall time of the same burst with no proxy (s)", None),
        ("threads_peak", "proxy threads, peak", None),
        ("rss_peak_added_mib", "RSS added, peak (MiB)", None),
    ])


def measure_load_rounds(options: BenchOptions, measure: LoadMeasure, rounds: int,
                        key: str) -> Dict[str, Figures]:
    """``measure`` ``rounds`` times against each implementation, every proxy up at once and
    the rounds alternating between them (the order reversed each round). Each keeps the
    figures of its median round by ``key``; a proxy that fails keeps the rounds it ran."""
    done: Dict[str, List[Figures]] = {name: [] for name in options.implementations}
    errors: List[str] = []
    with bench_load.LoadKit() as kit, contextlib.ExitStack() as stack:
        proxies = _start_proxies(stack, options.implementations, errors)
        for round_ in range(rounds):
            for name in (list(proxies)[::-1] if round_ % 2 else list(proxies)):
                figures: Figures = {}
                try:
                    measure(kit, options.load, *proxies[name], figures)
                    done[name].append(figures)
                    print(f"  round {round_ + 1}: {name} {key} {figures.get(key)}", file=sys.stderr,
                          flush=True)
                except (BenchError, OSError, RuntimeError, TimeoutError) as error:
                    errors.append(f"{name}: {type(error).__name__}: {error}")
                    del proxies[name]
                kit.wait_for_idle_origin()
    for message in errors:
        print(f"  ERROR {message}", file=sys.stderr)
    return {name: median_round(figures, key) for name, figures in done.items()}


def _start_proxies(stack: contextlib.ExitStack, names: Sequence[str],
                   errors: List[str]) -> Dict[str, Tuple[int, int]]:
    """A SOCKS5 -> freedom proxy of each implementation: name -> (port, pid)."""
    proxies = {}
    for name in names:
        port = free_port()
        try:
            (proxy,) = stack.enter_context(running_chain(
                name, [socks_freedom_config(port, access="none")], errors))
        except (BenchError, OSError, RuntimeError, TimeoutError) as error:
            errors.append(f"{name}: {type(error).__name__}: {error}")
            continue
        proxies[name] = (port, proxy.pid)
    return proxies


def median_round(rounds: Sequence[Figures], key: str) -> Figures:
    """The round whose ``key`` is the median (the upper one of an even count); {} if none."""
    if not rounds:
        return {}
    ordered = sorted(rounds, key=lambda figures: (figures.get(key) is None, figures.get(key) or 0.0))
    return ordered[len(ordered) // 2]


def scenario_udp(options: BenchOptions) -> List[Row]:
    """dokodemo-door UDP -> VMess -> VMess -> freedom: datagrams/s and DNS query latency."""
    import bench_udp  # dnspython is a test dependency: only this scenario needs it

    metrics, errors = bench_udp.run(make_process, options.implementations, options.quick)
    for error in errors:
        print(f"  ERROR {error}", file=sys.stderr)
    return [Row(metric, values, Target(*target) if target else None)
            for metric, values, target in metrics]


# Mux.cool (issue 17): 50 short connections at once through one VMess+mux chain, and bulk.
MUX_BURST = 50
MUX_ROUNDS = 5


def mux_pair_configs(entry_port: int) -> List[Dict[str, object]]:
    server, client = vmess_pair_configs(entry_port)
    client["outbounds"][0]["mux"] = {"enabled": True}  # type: ignore[index]
    return [server, client]


def measure_burst(proxy_port: int, echo: TcpEchoServer, budget: FailureBudget
                  ) -> Tuple[float, List[float]]:
    """Wall ms of MUX_BURST echoes started at once (a barrier), and each one's ms."""
    barrier = threading.Barrier(MUX_BURST)

    def one(_: int) -> float:
        barrier.wait(timeout=PHASE_DEADLINE)
        return budget.retry(lambda: timed_echo(proxy_port, echo))

    started = time.perf_counter()
    with ThreadPoolExecutor(MUX_BURST, thread_name_prefix="mux-burst") as pool:
        samples = list(pool.map(one, range(MUX_BURST), timeout=PHASE_DEADLINE))
    return (time.perf_counter() - started) * 1000, samples


def scenario_mux(options: BenchOptions) -> List[Row]:
    """SOCKS5 -> VMess + Mux.cool (concurrency 8) -> VMess -> freedom: bursts and bulk.

    The chains run side by side, as ``measure_columns``'s: bursts and downloads alternate."""
    columns = [Column(name, same_chain(name, mux_pair_configs)) for name in options.implementations]
    with BulkSource(options.bulk_bytes, max_connections=BULK_CONNECTIONS, timeout=CLIENT_TIMEOUT) as bulk, \
            TcpEchoServer(max_connections=MUX_BURST * MUX_ROUNDS + LINGERING_CONNECTIONS,
                          timeout=PHASE_DEADLINE) as echo:
        chains = measure_columns(columns, options, bulk, echo,
                                 middle=lambda live: _mux_bursts(live, echo))
    results = {chain.column.label: {
        "wall": statistics.median(chain.walls) if chain.walls else None,
        "p50": statistics.median(chain.samples) if chain.samples else None,
        "bulk": chain.column.result.download_mibps, "failed": float(chain.budget.count)}
        for chain in chains}

    def pick(key: str) -> Dict[str, Optional[float]]:
        return {name: figures.get(key) for name, figures in results.items()}

    return [
        Row(f"{MUX_BURST} connect + 1 KiB echo at once, wall, median of {MUX_ROUNDS} (ms)",
            pick("wall"), Target("ratio<=", 1.3)),
        Row(f"{MUX_BURST} at once, p50 of each (ms)", pick("p50")),
        Row(f"bulk download {options.bulk_bytes // MIB} MiB through mux, best of 3 (MiB/s)",
            pick("bulk"), Target("ratio>=", 1.0)),
        Row("connections that failed and were retried", pick("failed"), Target("value<=", 0)),
    ]


def _mux_bursts(live: List[_LiveChain], echo: TcpEchoServer) -> None:
    for round_ in range(MUX_ROUNDS):
        _each(live, lambda chain: _mux_burst(chain, echo), reverse=bool(round_ % 2))


def _mux_burst(chain: _LiveChain, echo: TcpEchoServer) -> None:
    wall, each = measure_burst(chain.port, echo, chain.budget)
    chain.walls.append(wall)
    chain.samples += each


SCENARIOS: Dict[str, Callable[[BenchOptions], List[Row]]] = {
    "relay": scenario_relay,
    "mux": scenario_mux,
    "vmess": scenario_vmess,
    "ss": scenario_ss,
    "tls": scenario_tls,
    "ws": scenario_ws,
    "vless": scenario_vless,
    "trojan": scenario_trojan,
    "route": scenario_route,
    "idle": scenario_idle,
    "massclose": scenario_massclose,
    "stalled": scenario_stalled,
    "burst": scenario_burst,
    "udp": scenario_udp,
    "mixed": scenario_mixed,
}


# -- output and entry point ----------------------------------------------------------------

def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(title: str, rows: Sequence[Row], implementations: Sequence[str]) -> str:
    header = ["metric", *implementations, "ratio", "target", "ok"]
    lines = [[row.metric, *(_cell(row.values.get(name)) for name in implementations),
              _cell(row.ratio()) + ("x" if row.ratio() is not None else ""),
              row.target.describe() if row.target else "",
              {True: "yes", False: "NO", None: ""}[row.target.passed(row) if row.target else None]]
             for row in rows]
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(len(header))]
    render = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
              for cells in [header, *lines]]
    rule = "-" * len(render[0])
    return "\n".join([title, rule, render[0], rule, *render[1:], rule])


def raise_fd_limit(needed: int) -> None:
    """Lift the soft fd limit to the hard one; children (the proxies) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise SystemExit(f"fd limit {target} is below the {needed} this run needs (ulimit -Hn)")


# The proxy holds one fd per idle connection, two per relaying one (massclose); the client
# and origin processes as many again each. Plus slack for everything else.
LOAD_FD_SLACK = 512
MASSCLOSE_DEFAULTS = (10_000, 2_000)  # the first the hard fd limit allows


def load_sizes(args: argparse.Namespace) -> LoadSizes:
    """--quick's or the full sizes, with --idle and --massclose if given."""
    sizes = bench_load.QUICK_SIZES if args.quick else LoadSizes()
    massclose = sizes.massclose_connections
    if not args.quick:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        massclose = next((m for m in MASSCLOSE_DEFAULTS
                          if hard == resource.RLIM_INFINITY or 2 * m + LOAD_FD_SLACK <= hard),
                         MASSCLOSE_DEFAULTS[-1])
    return dataclasses.replace(sizes, idle_connections=args.idle or sizes.idle_connections,
                               massclose_connections=args.massclose or massclose)


def fds_needed(names: Sequence[str], options: BenchOptions) -> int:
    # Per held connection of the chain scenarios: our client socket plus the echo server's.
    needed = [4 * options.connections + 256]
    if "idle" in names:
        needed.append(options.load.idle_connections + LOAD_FD_SLACK)
    if "massclose" in names:
        needed.append(2 * options.load.massclose_connections + LOAD_FD_SLACK)
    return max(needed)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--quick", action="store_true", help="smaller downloads and fewer rounds")
    parser.add_argument("--only", choices=IMPLEMENTATIONS, help="run one implementation only")
    parser.add_argument("--connections", type=int, default=500, help="idle connections held (default 500)")
    parser.add_argument("--idle", type=int, metavar="N",
                        help="idle scenario: connections held (default 10,000; --quick 1,000)")
    parser.add_argument("--massclose", type=int, metavar="M",
                        help="massclose scenario: connections closed at once (default 10,000 if the "
                             "fd limit allows, else 2,000; --quick 500)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed or a run failed")
    parser.add_argument("--stats", action="store_true",
                        help="chain scenarios: turn every traffic counter on (stats, policy "
                             "switches, tags, user emails) to measure what counting costs")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    implementations = (args.only,) if args.only else IMPLEMENTATIONS
    options = BenchOptions(args.quick, implementations, max(1, min(args.connections, 5000)),
                           load_sizes(args), args.stats)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    raise_fd_limit(fds_needed(names, options))
    failed = False
    for name in names:
        print(f"[{name}] {SCENARIOS[name].__doc__ or ''}".strip(), file=sys.stderr, flush=True)
        rows = SCENARIOS[name](options)
        print(file=sys.stderr, flush=True)
        print(format_table(f"{name}{' (quick)' if args.quick else ''}", rows, implementations), flush=True)
        failed = failed or any(row.target is not None and row.target.passed(row) is False for row in rows) \
            or any(value is None for row in rows for value in row.values.values())
    return 1 if (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
