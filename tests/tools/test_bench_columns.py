"""tools/bench.py's side-by-side runner: every chain of a comparison up at once, the phases
taken in turn, a chain that fails dropped with its error while the others go on.

The run checks that figures are taken and land in their column, never a timing.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bench  # noqa: E402
from bench_load import BenchError  # noqa: E402


def _chain(label: str) -> bench._LiveChain:
    return bench._LiveChain(bench.Column(label, bench.same_chain("v2sync", lambda port: [])), 0, [])


def test_each_takes_the_chains_in_turn_and_reversed() -> None:
    live = [_chain("a"), _chain("b"), _chain("c")]
    seen: List[str] = []
    bench._each(live, lambda chain: seen.append(chain.column.label))
    bench._each(live, lambda chain: seen.append(chain.column.label), reverse=True)
    assert seen == ["a", "b", "c", "c", "b", "a"]


@pytest.mark.parametrize("reverse", [False, True])
def test_a_chain_that_fails_leaves_with_its_error_and_the_others_go_on(reverse: bool) -> None:
    live = [_chain("a"), _chain("b"), _chain("c")]
    seen: List[str] = []

    def measure(chain: bench._LiveChain) -> None:
        if chain.column.label == "b":
            raise BenchError("boom")
        seen.append(chain.column.label)

    bench._each(live, measure, reverse=reverse)
    assert [chain.column.label for chain in live] == ["a", "c"]
    assert seen == (["c", "a"] if reverse else ["a", "c"])


def test_a_failed_chain_keeps_its_error_on_its_column() -> None:
    live = [_chain("a"), _chain("b")]
    column_b = live[1].column

    def measure(chain: bench._LiveChain) -> None:
        if chain.column.label == "b":
            raise OSError("refused")

    bench._each(live, measure)
    assert column_b.result.errors == ["b: OSError: refused"]
    assert live[0].column.result.errors == []


@contextlib.contextmanager
def _refusing_start(port: int, errors: List[str]) -> Iterator[List[bench.ConfigProcess]]:
    raise RuntimeError(f"no chain on {port}")
    yield []  # pragma: no cover (a generator for contextmanager)


def test_columns_run_side_by_side_and_a_chain_that_cannot_start_is_reported(
        capsys: pytest.CaptureFixture[str]) -> None:
    options = bench.BenchOptions(True, ("v2sync",), 5)
    def build(port: int) -> List[Dict[str, object]]:
        return [bench.socks_freedom_config(port, access="none")]

    columns = [bench.Column("broken", _refusing_start),
               bench.Column("first", bench.same_chain("v2sync", build)),
               bench.Column("second", bench.same_chain("v2sync", build))]
    with bench.BulkSource(8 * bench.MIB, max_connections=4, timeout=30) as bulk, \
            bench.TcpEchoServer(max_connections=bench.LINGERING_CONNECTIONS, timeout=30) as echo:
        bench.measure_columns(columns, options, bulk, echo)
    assert columns[0].result.errors and "no chain on" in columns[0].result.errors[0]
    assert columns[0].result.latency_p50_ms is None
    for column in columns[1:]:
        result = column.result
        stop_errors = [e for e in result.errors if "stop:" not in e]
        assert not stop_errors, stop_errors
        assert None not in (result.download_mibps, result.latency_p50_ms, result.latency_p99_ms,
                            result.kib_per_connection, result.threads_when_held)
        assert result.failed_connections == 0
    assert "ERROR broken: RuntimeError" in capsys.readouterr().err


def test_the_median_round_is_kept_whole() -> None:
    rounds = [{"seconds": 0.9, "threads_peak": 90.0}, {"seconds": 0.5, "threads_peak": 50.0},
              {"seconds": 0.7, "threads_peak": 70.0}]
    assert bench.median_round(rounds, "seconds") == {"seconds": 0.7, "threads_peak": 70.0}
    assert bench.median_round(rounds[:2], "seconds")["seconds"] == 0.9  # the upper of two
    assert bench.median_round([{"seconds": None}, {"seconds": 0.4}], "seconds") == {"seconds": None}
    assert bench.median_round([], "seconds") == {}


def test_a_small_mux_run_fills_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    rows = bench.scenario_mux(bench.BenchOptions(True, ("v2sync",), 5))
    assert "ERROR" not in capsys.readouterr().err
    assert [row.values.get("v2sync") is not None for row in rows] == [True] * len(rows)
    assert rows[-1].values["v2sync"] == 0  # no connection failed
