"""tools/bench.py's failure budget: a refused connection is retried and counted, never
silently sampled, and too many void the run (socket-free)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bench  # noqa: E402


def _failing(times: int, error: Exception):
    calls = {"n": 0}

    def attempt() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return "ok"
    return attempt


def test_failures_within_the_budget_are_retried_and_counted() -> None:
    budget = bench.FailureBudget(limit=3)
    assert budget.retry(_failing(2, bench.BenchError("EOF after 0 of 1024 bytes"))) == "ok"
    assert budget.retry(_failing(1, TimeoutError("timed out"))) == "ok"
    assert budget.count == 3


def test_one_failure_past_the_budget_voids_the_run() -> None:
    budget = bench.FailureBudget(limit=2)
    with pytest.raises(bench.BenchError, match="3 connections failed; the last: "
                                                "ConnectionResetError"):
        budget.retry(_failing(10, ConnectionResetError("reset")))


def test_other_errors_are_not_retried() -> None:
    budget = bench.FailureBudget(limit=5)
    with pytest.raises(ValueError):
        budget.retry(_failing(1, ValueError("a bug in the bench itself")))
    assert budget.count == 0
