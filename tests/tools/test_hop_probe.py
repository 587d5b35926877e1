"""tools/hop_probe.py: its pcap reader and hop cutter on captures built here (socket-free),
then the script itself against both real chains (tcpdump on loopback, root)."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))
import hop_probe  # noqa: E402
from hop_probe import Packet, Ports  # noqa: E402

from support.procs import missing_peer, require_v2ray  # noqa: E402

PORTS = Ports(entry=1080, server=8443, origin=7000)
SYN, ACK, PSH = 0x02, 0x10, 0x08
# (microseconds after the start, source port, destination port, TCP flags, payload bytes)
Wire = Tuple[int, int, int, int, int]


def one_connection(start: int, socks: int, dial: int, out: int) -> List[Wire]:
    """A connection's packets as the chain sends them, ``start`` µs in, its hops as long
    as ``EXPECTED`` says (ACKs carry no payload)."""
    e, s, o = PORTS.entry, PORTS.server, PORTS.origin
    return [
        (start, socks, e, SYN, 0), (start + 1, e, socks, SYN | ACK, 0),
        (start + 2, socks, e, PSH | ACK, 3), (start + 4, e, socks, PSH | ACK, 2),
        (start + 10, socks, e, PSH | ACK, 10),  # the SOCKS request
        (start + 12, e, socks, PSH | ACK, 10),  # its reply
        (start + 30, dial, s, SYN, 0), (start + 31, s, dial, SYN | ACK, 0),
        (start + 60, dial, s, PSH | ACK, 334),  # ClientHello
        (start + 100, s, dial, PSH | ACK, 734),  # the server's flight
        (start + 150, dial, s, PSH | ACK, 64),  # Finished alone ...
        (start + 155, socks, e, PSH | ACK, 1024),  # (the SOCKS client's payload)
        (start + 210, dial, s, PSH | ACK, 1072),  # ... then the request
        (start + 210 + 70, out, o, SYN, 0), (start + 281, o, out, SYN | ACK, 0),
        (start + 280 + 80, out, o, PSH | ACK, 1024),
        (start + 360 + 90, o, out, PSH | ACK, 1024),
        (start + 450 + 100, s, dial, PSH | ACK, 1048),
        (start + 550 + 110, e, socks, PSH | ACK, 1024),
    ]


def pcap(wires: Sequence[Wire], *, order: str = "<", nanos: bool = False,
         ipv6: bool = False) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)]
    for micros, src, dst, flags, payload in wires:
        frame = _frame(src, dst, flags, payload, ipv6)
        seconds, fraction = divmod(1_000_000 + micros, 1_000_000)
        out.append(struct.pack(order + "IIII", seconds, fraction * (1000 if nanos else 1),
                               len(frame), len(frame)) + frame)
    return b"".join(out)


def _frame(src: int, dst: int, flags: int, payload: int, ipv6: bool) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", src, dst, 1, 1, 5 << 4, flags, 65535, 0, 0)
    body = tcp + b"x" * payload
    if ipv6:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(body), 6, 64, b"\0" * 15 + b"\1",
                         b"\0" * 15 + b"\1")
        ethertype = 0x86DD
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 6, 0,
                         b"\x7f\0\0\1", b"\x7f\0\0\1")
        ethertype = 0x0800
    return b"\0" * 12 + struct.pack("!H", ethertype) + ip + body


EXPECTED = {"syn": 10, "request": 20, "dial": 30, "hello": 40, "flight": 110, "sent": 70,
            "origin": 80, "payload": 90, "echo": 100, "answer": 110, "total": 660}


def hops_of(data: bytes) -> List[dict]:
    return [{name: round(value) for name, value in hop_probe.hop_durations(times).items()}
            for times in hop_probe.connection_hops(hop_probe.read_pcap(data), PORTS)]


def test_each_hop_is_cut_where_the_next_process_sends() -> None:
    assert hops_of(pcap(one_connection(0, 40001, 40002, 40003))) == [EXPECTED]


@pytest.mark.parametrize("variant", [{"order": ">"}, {"nanos": True}, {"ipv6": True}])
def test_byte_order_nanoseconds_and_ipv6_read_the_same(variant: dict) -> None:
    assert hops_of(pcap(one_connection(0, 40001, 40002, 40003), **variant)) == [EXPECTED]


def test_a_previous_connection_s_late_packets_do_not_count() -> None:
    first = one_connection(0, 40001, 40002, 40003)
    second = one_connection(2000, 40011, 40012, 40013)
    # The first connection's close_notify and FINs arrive in the middle of the second's.
    late = [(2005, PORTS.server, 40002, PSH | ACK, 24), (2065, 40002, PORTS.server, ACK, 0),
            (2300, PORTS.origin, 40003, PSH | ACK, 5)]
    assert hops_of(pcap(sorted(first + second + late))) == [EXPECTED, EXPECTED]


def test_a_connection_that_lacks_a_hop_is_left_out() -> None:
    broken = [w for w in one_connection(1000, 40011, 40012, 40013) if w[2] != PORTS.origin]
    whole = one_connection(5000, 40021, 40022, 40023)
    assert hops_of(pcap(broken + whole)) == [EXPECTED]


@pytest.mark.parametrize("cut", [1, 17, 40])
def test_a_capture_cut_short_is_refused(cut: int) -> None:
    data = pcap(one_connection(0, 40001, 40002, 40003))
    with pytest.raises(ValueError, match="cut short"):
        hop_probe.read_pcap(data[:-cut])


def test_what_is_not_an_ethernet_pcap_is_refused() -> None:
    with pytest.raises(ValueError, match="not a pcap"):
        hop_probe.read_pcap(b"\0" * 100)
    sll = bytearray(pcap([]))
    sll[20:24] = struct.pack("<I", 113)  # Linux "cooked" capture (tcpdump -i any)
    with pytest.raises(ValueError, match="link type 113"):
        hop_probe.read_pcap(bytes(sll))


def test_packets_read_back_as_written() -> None:
    packets = hop_probe.read_pcap(pcap([(5, 1, 2, SYN, 0), (7, 2, 1, SYN | ACK, 0),
                                        (9, 1, 2, PSH | ACK, 3)]))
    assert [(round(p.at * 1e6) - 1_000_000, p.src, p.dst, p.syn, p.payload)
            for p in packets] == [(5, 1, 2, True, 0), (7, 2, 1, False, 0), (9, 1, 2, False, 3)]
    assert all(isinstance(p, Packet) for p in packets)


def _probe(*options: str) -> List[str]:
    require_v2ray()
    if shutil.which("tcpdump") is None:
        missing_peer("tcpdump (Debian package tcpdump) is not installed")
    if os.geteuid() != 0:
        missing_peer("capturing on lo needs root")
    result = subprocess.run([sys.executable, str(TOOLS / "hop_probe.py"), "--chain", "vless",
                             "--echoes", "10", "--rounds", "1", *options],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _figures(lines: List[str]) -> List[List[str]]:
    labels = [label for _, label in hop_probe.HOPS[:-1]] + ["total: "]
    rows = [next(line for line in lines if line.startswith(label)) for label in labels]
    return [row[hop_probe.LABEL_WIDTH:].split() for row in rows]


def test_the_script_prints_every_hop_for_both_chains() -> None:
    lines = _probe()
    assert "v2sync n=10, v2ray n=10" in lines[0]
    for figures in _figures(lines):
        assert len(figures) == 3 and all(float(f) > 0 for f in figures[:2]), figures


def test_with_server_only_the_client_differs() -> None:
    """``--server v2ray``: the v2sync client against a v2ray server (bench's mixed pairs)."""
    lines = _probe("--only", "v2sync", "--server", "v2ray")
    assert lines[0].endswith("(v2sync n=10; every server v2ray)"), lines[0]
    for figures in _figures(lines):
        assert len(figures) == 1 and float(figures[0]) > 0, figures
