"""The ``udp`` scenario of tools/bench.py: UDP through a VMess chain (issue 16).

    client (here) -> [dokodemo-door udp -> vmess out] -> [vmess in -> freedom] -> echo / DNS

Two measurements per implementation, both processes of the chain being that implementation:
  - datagrams per second: a closed loop of ``WINDOW`` outstanding 512-byte datagrams to a
    UDP echo for ``seconds``; a lost datagram is replaced after ``LOSS_TIMEOUT``;
  - DNS query p50/p99: dnspython queries, one at a time, to a dokodemo-door that leads to a
    small in-process DNS server (each query a fresh source port: a new UDP session, so the
    figure includes the chain's per-session setup).
Everything on loopback; every loop is bounded in count and time; processes are stopped in
a ``finally``.
"""
from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import dns.exception
import dns.message
import dns.query
import dns.rrset

from support.peers import UdpEchoServer, free_port
from support.procs import ConfigProcess

WINDOW = 32
DATAGRAM_SIZE = 512
LOSS_TIMEOUT = 0.5
WARMUP_DATAGRAMS = 50
DNS_TIMEOUT = 2.0
MAX_DNS_TIMEOUTS = 5
BENCH_ID = "5a3e2f1c-8b7d-4e6a-9c0b-1d2e3f4a5b6c"

Metric = Tuple[str, Dict[str, Optional[float]], Optional[Tuple[str, float]]]
MakeProcess = Callable[[str, Mapping[str, object]], ConfigProcess]


class DnsResponder:
    """Answers every A query with 192.0.2.1 (dnspython builds the answers)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bench-dns")

    def __enter__(self) -> "DnsResponder":
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            answer = dns.message.make_response(query)
            answer.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A",
                                                     "192.0.2.1"))
            self.sock.sendto(answer.to_wire(), peer)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def chain_configs(echo_port: int, dns_port: int, door_port: int, dns_door_port: int
                  ) -> List[Dict[str, object]]:
    """[server, client], servers first."""
    vmess_port = free_port()
    log = {"loglevel": "warning", "access": "none"}
    server = {"log": log, "outbounds": [{"protocol": "freedom"}],
              "inbounds": [{"listen": "127.0.0.1", "port": vmess_port, "protocol": "vmess",
                            "settings": {"clients": [{"id": BENCH_ID, "alterId": 0}]}}]}

    def door(port: int, target: int) -> Dict[str, object]:
        return {"listen": "127.0.0.1", "port": port, "protocol": "dokodemo-door",
                "settings": {"address": "127.0.0.1", "port": target, "network": "udp"}}

    user = {"id": BENCH_ID, "alterId": 0, "security": "aes-128-gcm"}
    client = {"log": log, "inbounds": [door(door_port, echo_port), door(dns_door_port, dns_port)],
              "outbounds": [{"protocol": "vmess", "settings": {"vnext": [
                  {"address": "127.0.0.1", "port": vmess_port, "users": [user]}]}}]}
    return [server, client]


def datagrams_per_second(port: int, seconds: float) -> float:
    """Echoed datagrams per second with ``WINDOW`` in flight."""
    payload = b"d" * DATAGRAM_SIZE
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(LOSS_TIMEOUT)
        for _ in range(WARMUP_DATAGRAMS):  # the session and its VMess connection exist
            sock.send(payload)
            try:
                sock.recv(4096)
            except socket.timeout:
                pass
        received = 0
        for _ in range(WINDOW):
            sock.send(payload)
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            try:
                sock.recv(4096)
                received += 1
            except socket.timeout:
                for _ in range(WINDOW):  # losses: refill the window
                    sock.send(payload)
                continue
            sock.send(payload)
        return received / (time.monotonic() - start)


def dns_latencies(port: int, rounds: int) -> Tuple[List[float], int]:
    """Query times (ms), and how many queries timed out and were asked again: v2ray 4.34 as
    a VMess server refuses about one fresh connection in 2,000-3,000 (see bench.py), and
    each query here is one. More than ``MAX_DNS_TIMEOUTS`` void the run."""
    times: List[float] = []
    timeouts = 0
    for i in range(rounds):
        query = dns.message.make_query(f"q{i}.bench.test", "A")
        while True:
            started = time.perf_counter()
            try:
                dns.query.udp(query, "127.0.0.1", port=port, timeout=DNS_TIMEOUT)
                break
            except dns.exception.Timeout:
                timeouts += 1
                print(f"  DNS query {i} timed out; asking again", file=sys.stderr, flush=True)
                if timeouts > MAX_DNS_TIMEOUTS:
                    raise
        times.append((time.perf_counter() - started) * 1000)
    return times, timeouts


def measure(make_process: MakeProcess, implementation: str, quick: bool,
            echo: UdpEchoServer, responder: DnsResponder, errors: List[str]
            ) -> Dict[str, Optional[float]]:
    door_port, dns_door_port = free_port(), free_port()
    results: Dict[str, Optional[float]] = {"dps": None, "p50": None, "p99": None,
                                           "timeouts": None}
    processes: List[ConfigProcess] = []
    try:
        for config in chain_configs(echo.port, responder.port, door_port, dns_door_port):
            processes.append(make_process(implementation, config))
            processes[-1].start()
        results["dps"] = datagrams_per_second(door_port, 3.0 if quick else 10.0)
        times, results["timeouts"] = dns_latencies(dns_door_port, 100 if quick else 300)
        results["p50"] = statistics.median(times)
        results["p99"] = statistics.quantiles(times, n=100)[98]
    except (OSError, RuntimeError, TimeoutError, dns.exception.DNSException) as error:
        errors.append(f"{implementation}: {type(error).__name__}: {error}")
    finally:
        for process in reversed(processes):
            try:
                process.stop()
            except AssertionError as error:
                errors.append(f"{implementation} stop: {error}")
    return results


def run(make_process: MakeProcess, implementations: Tuple[str, ...], quick: bool
        ) -> Tuple[List[Metric], List[str]]:
    errors: List[str] = []
    results = {}
    with UdpEchoServer() as echo, DnsResponder() as responder:
        for implementation in implementations:
            results[implementation] = measure(make_process, implementation, quick, echo,
                                              responder, errors)

    def pick(key: str) -> Dict[str, Optional[float]]:
        return {name: result[key] for name, result in results.items()}

    rounds = 100 if quick else 300
    return [
        (f"{DATAGRAM_SIZE} B datagrams echoed per second, {WINDOW} in flight", pick("dps"), None),
        (f"DNS query p50, new source port each, n={rounds} (ms)", pick("p50"), None),
        (f"DNS query p99, n={rounds} (ms)", pick("p99"), None),
        ("DNS queries that timed out and were asked again", pick("timeouts"), None),
    ], errors
