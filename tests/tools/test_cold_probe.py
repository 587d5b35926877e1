"""tools/cold_probe.py times real work: every decode it times accepts a fresh request
(none is refused as a replay), every encode makes a header the server decodes, and the
script prints a row of three medians per codec (socket-free)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))
import cold_probe  # noqa: E402

from v2sync.proxy.vmess.encoding import ServerSession  # noqa: E402
from v2sync.proxy.vmess.validator import RequestHeaderDecoder, SessionHistory, UserTable  # noqa: E402


def test_every_timed_decode_accepts_its_request() -> None:
    works = list(cold_probe.decode_work(5))  # all made first, as the probe does
    results = [work() for work in works]
    assert all(isinstance(result, tuple) and isinstance(result[0], ServerSession)
               for result in results)


def test_every_timed_encode_makes_a_header_the_server_accepts() -> None:
    table = UserTable()
    table.add(cold_probe._user())
    for work in list(cold_probe.encode_work(3)):
        wire = work()
        assert isinstance(wire, bytes)
        decoded = RequestHeaderDecoder(table, SessionHistory()).decode(wire)
        assert decoded is not None and decoded[1] == len(wire)


def test_the_script_prints_three_medians_per_codec() -> None:
    # A subprocess: the probe pins itself to one CPU, which must not pin the test run.
    result = subprocess.run([sys.executable, str(TOOLS / "cold_probe.py"), "--rounds", "3",
                             "--gap-ms", "0.1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("server:", "client:"))]
    assert len(rows) == 2
    for row in rows:
        figures = [float(value) for value in row.split()[-3:]]
        assert all(value > 0 for value in figures)


def test_bad_arguments_are_refused() -> None:
    result = subprocess.run([sys.executable, str(TOOLS / "cold_probe.py"), "--rounds", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--rounds must be >= 1" in result.stderr
