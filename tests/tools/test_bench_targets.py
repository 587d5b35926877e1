"""tools/bench.py's pass conditions: the targets each chain scenario prints are the issues'.

Issue 19 tightened the relay, VMess and VMess-over-TLS chains' targets (p50 <= 1.2x, the
relay's bulk lead >= 1.5x, VMess's >= 1.2x, memory per held connection <= 1.5x on the relay
and the VMess chain); issue 15 set VLESS's and Trojan's. The scenarios' rows are checked by
capturing what each passes to ``compare_chains``, so no chain is started here.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bench  # noqa: E402


def _row(v2sync: Optional[float], v2ray: Optional[float]) -> bench.Row:
    return bench.Row("figure", {"v2sync": v2sync, "v2ray": v2ray})


BOTH = bench.AllOf((bench.Target("value<=", 96.0), bench.Target("ratio<=", 1.5)))


@pytest.mark.parametrize("v2sync, v2ray, verdict", [
    (60.0, 100.0, True),    # under the limit and the ratio
    (97.0, 100.0, False),   # over the limit only
    (90.0, 50.0, False),    # over the ratio only
    (60.0, None, None),     # the ratio cannot be judged, the limit passes: no verdict
    (97.0, None, False),    # one failure is enough
])
def test_all_of_passes_only_when_every_target_does(v2sync: Optional[float], v2ray: Optional[float],
                                                    verdict: Optional[bool]) -> None:
    assert BOTH.passed(_row(v2sync, v2ray)) is verdict


def test_all_of_describes_every_target_and_prints_in_the_table() -> None:
    assert BOTH.describe() == "value <= 96, ratio <= 1.5x"
    row = bench.Row("RSS per held idle connection", {"v2sync": 97.0, "v2ray": 100.0}, BOTH)
    table = bench.format_table("relay", [row], bench.IMPLEMENTATIONS)
    assert "value <= 96, ratio <= 1.5x" in table and "NO" in table


def test_a_memory_row_gets_the_limit_the_ratio_both_or_none() -> None:
    assert bench._memory_target(96.0, None) == bench.Target("value<=", 96.0)
    assert bench._memory_target(None, 1.5) == bench.Target("ratio<=", 1.5)
    assert bench._memory_target(96.0, 1.5) == BOTH
    assert bench._memory_target(None, None) is None


Captured = List[Tuple[Optional[float], bench.ChainTargets]]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    """Each compare_chains call's memory limit and targets, in order; its rows are empty."""
    calls: Captured = []

    def record(options: bench.BenchOptions, build: object, memory_limit_kib: Optional[float] = None,
               targets: bench.ChainTargets = bench.DEFAULT_TARGETS) -> List[bench.Row]:
        calls.append((memory_limit_kib, targets))
        return []

    monkeypatch.setattr(bench, "compare_chains", record)
    return calls


ISSUE_TARGETS: Dict[str, Tuple[float, float, Optional[float], Optional[float]]] = {
    # scenario: (bulk ratio >=, p50 ratio <=, memory ratio <=, memory KiB <=)
    "relay": (1.5, 1.2, 1.5, bench.RELAY_MEMORY_LIMIT_KIB),
    "vmess": (1.2, 1.2, 1.5, None),
    "tls": (1.0, 1.2, None, None),
    "vless": (1.2, 1.3, 1.5, None),
    "trojan": (1.2, 1.3, 1.5, None),
}


@pytest.mark.parametrize("scenario", sorted(ISSUE_TARGETS))
def test_each_chain_scenario_is_judged_by_its_issues_targets(scenario: str, captured: Captured) -> None:
    options = bench.BenchOptions(True, ("v2sync",), 10)  # one implementation: no mixed pairs
    bench.SCENARIOS[scenario](options)
    memory_limit, targets = captured[0]
    bulk, p50, memory_ratio, limit = ISSUE_TARGETS[scenario]
    assert (targets.bulk_ratio, targets.p50_ratio, targets.memory_ratio, memory_limit) \
        == (bulk, p50, memory_ratio, limit)
