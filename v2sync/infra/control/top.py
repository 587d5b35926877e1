"""``v2sync top``: a live terminal dashboard of a proxy's traffic, from its API.

Each refresh asks StatsService for every counter (QueryStats, no reset, so other readers
are not disturbed) and for the process's figures (GetSysStats); rates are the change since
the last refresh. It works against v2sync and v2ray 4.34 alike. Rows are grouped by the
counter's kind (inbound, outbound, user) and show the up/down rates with a sparkline of
the last ``HISTORY`` refreshes and the totals. ``q`` or Ctrl-C quits. An unreachable API
shows the error and is retried at the next refresh.

Rich draws it (like ``cli.py``, a command-line module; the library never imports rich).
"""
from __future__ import annotations

import argparse
import contextlib
import select
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

HISTORY = 30
SPARKS = "▁▂▃▄▅▆▇█"
KINDS = ("inbound", "outbound", "user")
SEPARATOR = ">>>"


@dataclass
class Series:
    total: int = 0
    rate: float = 0.0
    history: Deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def update(self, value: int, seconds: float, first: bool) -> None:
        # A counter someone reset reads lower than before: its new value is the change.
        delta = value - self.total if value >= self.total else value
        self.total = value
        if not first and seconds > 0:
            self.rate = delta / seconds
            self.history.append(self.rate)


class Model:
    """The counters by (kind, name, direction), and what changed between samples."""

    def __init__(self) -> None:
        self.series: Dict[Tuple[str, str, str], Series] = {}
        self.sys: Any = None
        self.error = ""
        self.last: Optional[float] = None

    def sample(self, stats: List[Tuple[str, int]], sys_stats: Any, now: float) -> None:
        seconds = now - self.last if self.last is not None else 0.0
        for name, value in stats:
            parts = name.split(SEPARATOR)
            if len(parts) != 4 or parts[0] not in KINDS:
                continue
            key = (parts[0], parts[1], parts[3])
            first = key not in self.series
            self.series.setdefault(key, Series()).update(value, seconds, first)
        self.sys = sys_stats
        self.error = ""
        self.last = now

    def rows(self, kind: str) -> List[Tuple[str, Series, Series]]:
        names = sorted({name for k, name, _ in self.series if k == kind})
        return [(name, self.series.get((kind, name, "uplink"), Series()),
                 self.series.get((kind, name, "downlink"), Series())) for name in names]


def sparkline(values: Deque[float]) -> str:
    top = max(values, default=0.0)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(int(v / top * (len(SPARKS) - 1) + 0.5), len(SPARKS) - 1)]
                   for v in values)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(seconds: int) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours}:{minutes:02d}:{secs:02d}"


def render(model: Model, server: str) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    header = Text(f"v2sync top  {server}", style="bold")
    if model.sys is not None:
        s = model.sys
        header.append(f"   uptime {human_duration(s.Uptime)}   threads {s.NumGoroutine}"
                      f"   RSS {human_bytes(s.Sys)}   GC {s.NumGC}")
    parts: List[Any] = [header]
    if model.error:
        parts.append(Text(f"API error: {model.error} (retrying)", style="bold red"))
    for kind in KINDS:
        table = Table(title=f"{kind}s", title_justify="left", expand=True)
        for column in (kind, "up/s", "down/s", "up trend", "down trend", "up total",
                       "down total"):
            table.add_column(column, justify="left" if column in (kind, "up trend", "down trend")
                             else "right", no_wrap=True)
        for name, up, down in model.rows(kind):
            table.add_row(name, human_bytes(up.rate) + "/s", human_bytes(down.rate) + "/s",
                          sparkline(up.history), sparkline(down.history),
                          human_bytes(up.total), human_bytes(down.total))
        if not table.row_count:
            table.add_row("(no counters)", "", "", "", "", "", "")
        parts.append(table)
    parts.append(Text("q or Ctrl-C quits", style="dim"))
    return Group(*parts)


class Poller:
    """One API connection, reopened after a failure."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.client: Any = None

    def fetch(self) -> Tuple[List[Tuple[str, int]], Any]:
        from v2sync.app.commander.client import GrpcClient
        from v2sync.app.commander.pb.app.stats.command import command_pb2 as pb

        if self.client is None:
            self.client = GrpcClient(self.host, self.port, self.timeout)
        base = "/v2ray.core.app.stats.command.StatsService/"
        try:
            query = self.client.call(base + "QueryStats", pb.QueryStatsRequest(),
                                     pb.QueryStatsResponse)
            sys_stats = self.client.call(base + "GetSysStats", pb.SysStatsRequest(),
                                         pb.SysStatsResponse)
        except Exception:
            self.close()
            raise
        return [(s.name, s.value) for s in query.stat], sys_stats

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """``wait(seconds)`` returns a key pressed within that time ("" if none); the terminal
    is in cbreak mode meanwhile (restored after). Without a terminal it only sleeps."""
    if not sys.stdin.isatty():
        yield lambda seconds: time.sleep(seconds) or ""
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def wait(seconds: float) -> str:
        ready, _, _ = select.select([fd], [], [], seconds)
        return sys.stdin.read(1) if ready else ""

    try:
        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    from rich.live import Live

    from v2sync.common.errors import ConfigError, V2SyncError
    from v2sync.common.net import parse_host_port

    try:
        host, port = parse_host_port(args.server, "--server")
    except ConfigError as e:
        say(f"v2sync top: {e}")
        return 2
    model, poller = Model(), Poller(host, port, max(args.interval, 1.0) * 3)
    refreshes = 0
    try:
        with _keys() as wait, Live(render(model, args.server), auto_refresh=False,
                                   screen=False) as live:
            while not args.iterations or refreshes < args.iterations:
                try:
                    model.sample(*poller.fetch(), time.monotonic())
                except V2SyncError as e:
                    model.error = str(e)
                live.update(render(model, args.server), refresh=True)
                refreshes += 1
                if wait(args.interval).lower() == "q":
                    break
    except KeyboardInterrupt:
        pass
    finally:
        poller.close()
    return 0
