#!/usr/bin/env python3
"""What a VMess header costs back to back, and what it costs after the CPU has been idle.

    python tools/cold_probe.py [--rounds 500] [--gap-ms 2] [--cpu N]

A proxy in a chain handles a connection in short bursts (a header, a dial, an answer) with
waits between them, and on an idle CPU each burst starts cold. This times the same work
three ways, in one process pinned to one CPU (the highest, as ``v2sync run`` would pick):
back to back; after sleeping ``--gap-ms`` before each call (the CPU idles, as it does
between a proxy's bursts); after spinning ``--gap-ms`` instead (the CPU stays busy with
this process). It prints the median microseconds of each, for the VMess server's
request-header decode (AEAD, one user) and the client's request-header encode. No
sockets; every loop is bounded by ``--rounds``.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from v2sync.common.net import Address  # noqa: E402
from v2sync.proxy.vmess import encoding as enc  # noqa: E402
from v2sync.proxy.vmess.ids import Security, VMessUser  # noqa: E402
from v2sync.proxy.vmess.validator import (RequestHeaderDecoder, SessionHistory,  # noqa: E402
                                          UserTable)

USER_ID = "b831381d-6324-4d53-ad4f-8cda48b30811"
MODES = ("back to back", "after a sleep", "after a spin")

Work = Callable[[], object]


def _user() -> VMessUser:
    return VMessUser.from_text(USER_ID, security=Security.AES128_GCM)


def _header() -> enc.RequestHeader:
    security = Security.AES128_GCM
    return enc.RequestHeader(enc.Command.TCP, security, enc.client_options(security),
                             Address.parse("127.0.0.1"), 443)


def encode_work(rounds: int) -> Iterator[Work]:
    """One fresh client session's request header per call."""
    user, header = _user(), _header()
    for _ in range(rounds):
        yield functools.partial(enc.ClientSession(user).encode_request_header, header,
                                time.time())


def decode_work(rounds: int) -> Iterator[Work]:
    """One fresh request decoded per call (each has its own AuthID: no replay refusal)."""
    user, header = _user(), _header()
    table, sessions = UserTable(), SessionHistory()
    table.add(user)
    for _ in range(rounds):
        wire = enc.ClientSession(user).encode_request_header(header, time.time())
        yield functools.partial(RequestHeaderDecoder(table, sessions).decode, wire)


def _pause(mode: str, gap: float) -> None:
    if mode == "after a sleep":
        time.sleep(gap)
    elif mode == "after a spin":
        until = time.perf_counter() + gap
        while time.perf_counter() < until:
            pass


def time_work(works: Iterator[Work], mode: str, gap: float) -> float:
    """Median µs of each work item, each preceded by ``mode``'s pause (made beforehand:
    only the call is timed)."""
    samples: List[float] = []
    for work in list(works):
        _pause(mode, gap)
        started = time.perf_counter_ns()
        work()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return statistics.median(samples)


def pin(cpu: Optional[int]) -> Optional[int]:
    """Pin to ``cpu`` (default: the highest allowed); None where affinity is unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    chosen = max(os.sched_getaffinity(0)) if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


def measure(rounds: int, gap: float) -> List[Tuple[str, List[float]]]:
    rows = []
    for label, make in (("server: request header decode", decode_work),
                        ("client: request header encode", encode_work)):
        rows.append((label, [time_work(make(rounds), mode, gap) for mode in MODES]))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.gap_ms < 0:
        parser.error("--rounds must be >= 1 and --gap-ms >= 0")
    cpu = pin(args.cpu)
    print(f"CPU {cpu if cpu is not None else 'unpinned'}, {args.rounds} rounds, "
          f"{args.gap_ms:g} ms pauses; median µs:")
    print(f"{'':32}" + "".join(f"{mode:>16}" for mode in MODES))
    for label, figures in measure(args.rounds, args.gap_ms / 1000):
        print(f"{label:32}" + "".join(f"{value:16.1f}" for value in figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
