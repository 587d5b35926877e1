#!/usr/bin/env python3
"""Where a new connection's time goes, hop by hop, through v2sync's chain and v2ray's.

    python tools/hop_probe.py [--chain vless|trojan|tls] [--echoes 300] [--rounds 2]
                              [--only v2sync|v2ray] [--server v2ray|v2sync]

``tools/bench.py``'s latency figure is one number per connection: connect, SOCKS handshake,
1 KiB echo, close. This probe splits it where the work passes from one process to the next,
by the packets on the wire, so nothing is added inside either process: it runs the bench's
chain (SOCKS5 -> the protocol's outbound over TLS -> its inbound -> freedom -> an echo
origin), records loopback with ``tcpdump`` while the same sequential echoes run, and reads
in each connection's packets when each hop started (``HOPS``). Each row is a median over
every connection of every round, in microseconds; the rounds alternate the
implementations, so a slow minute falls on both. With ``--server``, every column's server is
that implementation and only the client differs (``tools/bench.py mixed``'s pairs).

Needs root and ``tcpdump``. Loopback only; every echo and every wait has a deadline, and
every process (the chain's, tcpdump) is stopped in a ``finally``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # reuse the test harness (support.*)
sys.path.insert(0, str(REPO_ROOT / "tools"))  # and the benchmark's chains

import bench  # noqa: E402
from support.peers import TcpEchoServer  # noqa: E402

# -- reading a capture (pure: bytes in, packets out) ---------------------------------------


class Packet(NamedTuple):
    at: float  # seconds, from the capture's clock
    src: int  # TCP ports
    dst: int
    syn: bool  # SYN without ACK: a connection's first packet
    payload: int  # TCP payload bytes


_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
          b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
_GLOBAL_HEADER, _RECORD_HEADER, _ETHERNET_HEADER = 24, 16, 14
LINKTYPE_ETHERNET = 1  # what tcpdump records on Linux's ``lo``
_IPV4, _IPV6, _TCP = 0x0800, 0x86DD, 6
_SYN, _ACK = 0x02, 0x10


def read_pcap(data: bytes) -> List[Packet]:
    """The TCP packets of a classic pcap file (Ethernet frames, IPv4 or IPv6), in order.
    ValueError for anything else, or for a file cut short inside a record."""
    if len(data) < _GLOBAL_HEADER or data[:4] not in _MAGIC:
        raise ValueError("not a pcap capture (bad magic or too short)")
    order, unit = _MAGIC[data[:4]]
    linktype = struct.unpack_from(order + "I", data, 20)[0]
    if linktype != LINKTYPE_ETHERNET:
        raise ValueError(f"pcap link type {linktype} is not Ethernet (capture on lo)")
    packets, offset = [], _GLOBAL_HEADER
    while offset < len(data):
        if offset + _RECORD_HEADER > len(data):
            raise ValueError(f"pcap cut short in a record header at byte {offset}")
        seconds, fraction, kept, _ = struct.unpack_from(order + "IIII", data, offset)
        offset += _RECORD_HEADER
        if offset + kept > len(data):
            raise ValueError(f"pcap cut short in a record at byte {offset}")
        packet = _tcp_packet(seconds + fraction * unit, data[offset:offset + kept])
        if packet is not None:
            packets.append(packet)
        offset += kept
    return packets


def _tcp_packet(at: float, frame: bytes) -> Optional[Packet]:
    """A frame's TCP header, or None (not IP, not TCP, or cut short by the snap length)."""
    if len(frame) < _ETHERNET_HEADER:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[_ETHERNET_HEADER:]
    if ethertype == _IPV4 and len(ip) >= 20 and ip[9] == _TCP:
        header, total = (ip[0] & 0x0F) * 4, struct.unpack_from("!H", ip, 2)[0]
    elif ethertype == _IPV6 and len(ip) >= 40 and ip[6] == _TCP:
        header, total = 40, 40 + struct.unpack_from("!H", ip, 4)[0]
    else:
        return None
    tcp = ip[header:]
    if len(tcp) < 20:
        return None
    src, dst = struct.unpack_from("!HH", tcp, 0)
    tcp_header, flags = (tcp[12] >> 4) * 4, tcp[13]
    return Packet(at, src, dst, flags & (_SYN | _ACK) == _SYN, total - header - tcp_header)


# -- cutting a capture into connections and hops (pure) ------------------------------------

# Each hop ends where the next begins; the process named first does the work in between.
HOPS = (
    ("syn", "client: accept, SOCKS greeting (+ the client's request)"),
    ("request", "client: SOCKS request -> SYN to the server"),
    ("dial", "client: connect -> ClientHello"),
    ("hello", "server: ClientHello -> its handshake flight"),
    ("flight", "client: the flight -> Finished and the request sent"),
    ("sent", "server: the request -> SYN to the origin"),
    ("origin", "server: connect -> the payload to the origin"),
    ("payload", "origin: the echo (the test's own server)"),
    ("echo", "server: the echo -> the answer to the client"),
    ("answer", "client: the answer -> the SOCKS client"),
    ("out", ""),
)


@dataclass(frozen=True)
class Ports:
    entry: int  # the client process's SOCKS port
    server: int  # the server process's inbound port
    origin: int  # the echo server's port


def connection_hops(packets: Sequence[Packet], ports: Ports) -> Iterator[Dict[str, float]]:
    """For each complete connection, when each hop of ``HOPS`` began. A connection is the
    packets from one SYN to the entry port to the next; inside it only the three TCP
    connections that SYN, the client's dial and the server's dial opened count (a
    previous connection's late close_notify or FIN is not this one's). A connection that
    lacks a hop (a failed echo, the capture's edges) is left out."""
    starts = [i for i, p in enumerate(packets) if p.syn and p.dst == ports.entry]
    for first, end in zip(starts, starts[1:] + [len(packets)]):
        times = _hop_times(packets[first:end], ports)
        if times is not None:
            yield times


def _hop_times(packets: Sequence[Packet], ports: Ports) -> Optional[Dict[str, float]]:
    entry = _Leg(packets, ports.entry, packets[0].src)
    dial = _first(p for p in packets if p.syn and p.dst == ports.server)
    origin_syn = _first(p for p in packets if p.syn and p.dst == ports.origin)
    if dial is None or origin_syn is None:
        return None
    server = _Leg(packets, ports.server, dial.src)
    origin = _Leg(packets, ports.origin, origin_syn.src)
    requests = entry.sent()
    times = {"syn": packets[0].at,
             "request": requests[1].at if len(requests) > 1 else None,
             "dial": dial.at,
             "hello": _at(server.sent()),
             "flight": _at(server.received()),
             "sent": _at([p for p in server.sent() if p.at < origin_syn.at][-1:]),
             "origin": origin_syn.at,
             "payload": _at(origin.sent()),
             "echo": _at(origin.received())}
    if times["echo"] is not None:
        times["answer"] = _at([p for p in server.received() if p.at > times["echo"]])
    if times.get("answer") is not None:
        times["out"] = _at([p for p in entry.received() if p.at > times["answer"]])
    if any(times.get(name) is None for name, _ in HOPS):
        return None
    return times  # type: ignore[return-value]  # every value checked just above


class _Leg:
    """One TCP connection of a proxied connection: the payload packets each way."""

    def __init__(self, packets: Sequence[Packet], port: int, peer: int):
        self._to = [p for p in packets if p.payload and (p.src, p.dst) == (peer, port)]
        self._from = [p for p in packets if p.payload and (p.src, p.dst) == (port, peer)]

    def sent(self) -> List[Packet]:
        """Payload packets towards the listening port, in order."""
        return self._to

    def received(self) -> List[Packet]:
        return self._from


def _first(packets: Iterator[Packet]) -> Optional[Packet]:
    return next(packets, None)


def _at(packets: Sequence[Packet]) -> Optional[float]:
    return packets[0].at if packets else None


def hop_durations(times: Mapping[str, float]) -> Dict[str, float]:
    """Microseconds of each hop (named by where it starts), and ``total``."""
    names = [name for name, _ in HOPS]
    durations = {a: 1e6 * (times[b] - times[a]) for a, b in zip(names, names[1:])}
    durations["total"] = 1e6 * (times[names[-1]] - times[names[0]])
    return durations


def medians(samples: Sequence[Mapping[str, float]]) -> Dict[str, float]:
    return {name: statistics.median(s[name] for s in samples) for name in samples[0]}


# -- running the chains --------------------------------------------------------------------

CHAINS: Dict[str, Callable[[int], List[Dict[str, object]]]] = {
    "vless": functools.partial(bench.keyed_pair_configs, "vless"),
    "trojan": functools.partial(bench.keyed_pair_configs, "trojan"),
    "tls": lambda port: bench.vmess_pair_configs(port, *bench.tls_streams()),
}
WARM_ECHOES = 50
ECHO_CONNECTIONS = 2000  # open at once at most
CAPTURE_READY_TIMEOUT = 10.0  # tcpdump says "listening on lo" once it captures
CAPTURE_STOP_TIMEOUT = 10.0
# tcpdump reports "listening" a little before its first packets arrive, and on SIGINT
# writes what it has read so far: a pause on each side keeps the edges' connections whole.
CAPTURE_SETTLE = 0.5
CAPTURE_BUFFER_KIB = 16384  # tcpdump -B: no packet dropped while echoes run back to back


@contextlib.contextmanager
def capturing(path: Path, ports: Ports) -> Iterator[None]:
    """tcpdump on ``lo`` into ``path`` for the block's duration (SIGINT flushes it)."""
    flt = " or ".join(f"tcp port {port}" for port in (ports.entry, ports.server, ports.origin))
    proc = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-B", str(CAPTURE_BUFFER_KIB),
                             "-w", str(path), flt],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(proc)
        time.sleep(CAPTURE_SETTLE)
        yield
        time.sleep(CAPTURE_SETTLE)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(CAPTURE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(CAPTURE_STOP_TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()


def _wait_listening(proc: subprocess.Popen) -> None:
    """Until tcpdump's "listening on" line (it writes whole lines to stderr)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + CAPTURE_READY_TIMEOUT
    said = ""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([proc.stderr], [], [], deadline - time.monotonic())
        line = proc.stderr.readline() if readable else ""
        if "listening on" in line:
            return
        said += line
        if readable and not line:
            break  # tcpdump exited
    raise RuntimeError(f"tcpdump did not start capturing: {said.strip() or 'no answer'}")


def run_once(implementation: str, chain: str, echoes: int, echo: TcpEchoServer,
             workdir: Path, server: Optional[str] = None) -> List[Dict[str, float]]:
    """Hop durations of ``echoes`` sequential connections through one implementation."""
    entry = bench.free_port()
    configs = CHAINS[chain](entry)
    ports = Ports(entry, _inbound_port(configs[0]), echo.address[1])
    path = workdir / f"{implementation}.pcap"
    errors: List[str] = []
    with bench.running_chain(server or implementation, configs[:1], errors), \
            bench.running_chain(implementation, configs[1:], errors):
        for _ in range(WARM_ECHOES):
            bench.echo_once(entry, echo)
        with capturing(path, ports):
            for _ in range(echoes):
                bench.echo_once(entry, echo)
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    packets = read_pcap(path.read_bytes())
    durations = [hop_durations(times) for times in connection_hops(packets, ports)]
    if len(durations) < echoes:
        print(f"{implementation}: {echoes - len(durations)} of {echoes} connections not whole "
              "in the capture; left out", file=sys.stderr)
    return durations


def _inbound_port(config: Mapping[str, object]) -> int:
    inbounds = config["inbounds"]
    assert isinstance(inbounds, list)
    return int(inbounds[0]["port"])


LABEL_WIDTH = 56


def report(samples: Mapping[str, List[Dict[str, float]]],
           server: Optional[str] = None) -> List[str]:
    """The table: one row per hop, a column per implementation, and their difference."""
    names = [impl for impl in bench.IMPLEMENTATIONS if samples.get(impl)]
    figures = {impl: medians(samples[impl]) for impl in names}
    counts = ", ".join(f"{impl} n={len(samples[impl])}" for impl in names)
    servers = f"; every server {server}" if server else ""
    lines = [f"median microseconds per hop ({counts}{servers})",
             f"{'hop':<{LABEL_WIDTH}}" + "".join(f"{impl:>9}" for impl in names)
             + ("  v2sync-v2ray" if len(names) == 2 else "")]
    labels = dict(HOPS[:-1], total="total: SYN to the SOCKS port -> the answer out of it")
    for hop, label in labels.items():
        row = f"{label:<{LABEL_WIDTH}}" + "".join(f"{figures[impl][hop]:9.0f}" for impl in names)
        if len(names) == 2:
            row += f"  {figures[names[0]][hop] - figures[names[1]][hop]:+12.0f}"
        lines.append(row)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", choices=sorted(CHAINS), default="vless")
    parser.add_argument("--echoes", type=int, default=300, help="connections per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=bench.IMPLEMENTATIONS)
    parser.add_argument("--server", choices=bench.IMPLEMENTATIONS,
                        help="run every column's server on this implementation")
    args = parser.parse_args()
    if shutil.which("tcpdump") is None:
        print("hop_probe: needs tcpdump (apt-get install tcpdump), run as root",
              file=sys.stderr)
        return 2
    echoes, rounds = max(1, min(args.echoes, 5000)), max(1, min(args.rounds, 10))
    implementations = (args.only,) if args.only else bench.IMPLEMENTATIONS
    samples: Dict[str, List[Dict[str, float]]] = {impl: [] for impl in implementations}
    # Each origin connection lingers ~1 s after its echo (freedom's downlinkOnly timer).
    with TcpEchoServer(max_connections=ECHO_CONNECTIONS, timeout=bench.CLIENT_TIMEOUT) as echo, \
            tempfile.TemporaryDirectory(prefix="hop-probe-") as workdir:
        for _ in range(rounds):
            for impl in implementations:
                samples[impl] += run_once(impl, args.chain, echoes, echo, Path(workdir), args.server)
    if not any(samples.values()):
        print("hop_probe: no complete connection in the capture", file=sys.stderr)
        return 1
    print("\n".join(report(samples, args.server)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
