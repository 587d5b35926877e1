"""tools/bench.py's failure budget: a refused connection is retried and counted, never
silently sampled; wrong data is never retried; too many failures void the run
(socket-free)."""
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
    assert budget.retry(_failing(2, bench.Refused("EOF after 0 of 1024 bytes"))) == "ok"
    assert budget.retry(_failing(1, TimeoutError("timed out"))) == "ok"
    assert budget.count == 3


def test_one_failure_past_the_budget_voids_the_run() -> None:
    budget = bench.FailureBudget(limit=2)
    with pytest.raises(bench.BenchError, match="3 connections failed; the last: "
                                                "ConnectionResetError"):
        budget.retry(_failing(10, ConnectionResetError("reset")))


@pytest.mark.parametrize("error", [bench.BenchError("echo mismatch"),
                                   bench.BenchError("EOF after 512 of 1024 bytes"),
                                   ValueError("a bug in the bench itself")])
def test_wrong_data_and_other_errors_are_not_retried(error: Exception) -> None:
    budget = bench.FailureBudget(limit=5)
    with pytest.raises(type(error)):
        budget.retry(_failing(1, error))
    assert budget.count == 0


@pytest.mark.parametrize("sent, refused", [(b"", True), (b"half", False)])
def test_eof_before_any_answer_is_a_refusal_and_mid_answer_is_not(sent: bytes,
                                                                  refused: bool) -> None:
    import socket
    ours, theirs = socket.socketpair()
    with ours:
        with theirs:
            theirs.sendall(sent)
        with pytest.raises(bench.BenchError) as caught:
            bench.recv_exact(ours, 8)
    assert isinstance(caught.value, bench.Refused) is refused
