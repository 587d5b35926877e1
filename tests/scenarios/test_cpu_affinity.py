"""CPU pinning of real ``v2sync run`` processes (common/affinity.py).

By default each process keeps all its threads on one CPU and two processes claim different
CPUs; ``--cpu all`` / ``V2SYNC_CPU=all`` leaves scheduling to the kernel; a bad value is a
clear error before anything starts.

Each test claims CPUs in a namespace of its own (``$V2SYNC_CPU_NAMESPACE``), so a v2sync
running elsewhere on the machine, or another test run's processes, hold no claim it sees.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Set

import pytest
from scenarios.helpers_scenarios import make_config, run_cli, socks_inbound
from support.peers import free_port
from support.procs import V2SyncProcess

from v2sync.common import affinity

EXIT_USAGE = 2

needs_two_cpus = pytest.mark.skipif(
    not affinity.supported() or len(os.sched_getaffinity(0)) < 2,
    reason="pinning needs Linux and two CPUs")


@pytest.fixture
def namespace() -> str:
    """This test's own CPU claim namespace."""
    return f"test-{uuid.uuid4().hex}"


def _process(namespace: str, cpu: str = "auto") -> V2SyncProcess:
    config = make_config([socks_inbound(port=free_port())],
                         log={"access": "none", "loglevel": "warning"})
    # Whatever the caller's environment says.
    return V2SyncProcess(config, env={affinity.ENV_VAR: cpu, affinity.NAMESPACE_ENV_VAR: namespace})


def thread_cpus(pid: int) -> Set[str]:
    """Every thread's allowed-CPU list, e.g. {"1"} when all are pinned to CPU 1."""
    lists = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as status:
            for line in status:
                if line.startswith("Cpus_allowed_list:"):
                    lists.add(line.split(":", 1)[1].strip())
    return lists


def _assert_pinned_apart(namespace: str) -> None:
    with _process(namespace) as first, _process(namespace) as second:
        cpus = thread_cpus(first.pid), thread_cpus(second.pid)
    assert all(len(c) == 1 and next(iter(c)).isdigit() for c in cpus), cpus
    assert cpus[0] != cpus[1], f"both on {cpus[0]}"


@needs_two_cpus
def test_two_processes_pin_every_thread_each_to_its_own_cpu(namespace: str) -> None:
    _assert_pinned_apart(namespace)


@needs_two_cpus
def test_claims_outside_the_namespace_change_nothing(namespace: str) -> None:
    """Every CPU held in another namespace, as a ``v2sync run`` on the host holds one."""
    other = affinity.claim_prefix(f"{namespace}-other")
    held = [affinity.claim_cpu([cpu], other) for cpu in os.sched_getaffinity(0)]
    try:
        assert all(claim is not None for claim in held)
        _assert_pinned_apart(namespace)
    finally:
        for claim in held:
            if claim is not None:
                claim.close()


@needs_two_cpus
def test_all_leaves_scheduling_to_the_kernel(namespace: str) -> None:
    mine = thread_cpus(os.getpid())
    with _process(namespace, "all") as proc:
        assert thread_cpus(proc.pid) == mine


def _run(tmp_path: Path, *args: str, **env: str) -> "subprocess.CompletedProcess[str]":
    return run_cli("run", *args, cwd=tmp_path, **{affinity.ENV_VAR: "auto",
                                                  affinity.NAMESPACE_ENV_VAR: "", **env})


def test_a_bad_cpu_value_is_a_usage_error(tmp_path: Path) -> None:
    result = _run(tmp_path, "--cpu", "fast")
    assert result.returncode == EXIT_USAGE, result.stdout
    assert "--cpu: 'fast' is not a CPU setting (expected auto, all or a CPU number)" in result.stdout
    from_env = _run(tmp_path, V2SYNC_CPU="0-1")
    assert from_env.returncode == EXIT_USAGE, from_env.stdout
    assert "$V2SYNC_CPU: '0-1' is not a CPU setting" in from_env.stdout


@needs_two_cpus
def test_a_cpu_this_process_may_not_use_is_refused(tmp_path: Path) -> None:
    missing = max(os.sched_getaffinity(0)) + 1
    result = _run(tmp_path, "--cpu", str(missing))
    assert result.returncode == EXIT_USAGE, result.stdout
    assert f"CPU {missing} is not available to this process" in result.stdout
