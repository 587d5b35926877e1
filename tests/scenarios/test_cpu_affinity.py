"""CPU pinning of real ``v2sync run`` processes (common/affinity.py).

By default each process keeps all its threads on one CPU and two processes claim different
CPUs; ``--cpu all`` / ``V2SYNC_CPU=all`` leaves scheduling to the kernel; a bad value is a
clear error before anything starts.
"""
from __future__ import annotations

import os
import subprocess
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


def _process(cpu: str = "auto") -> V2SyncProcess:
    config = make_config([socks_inbound(port=free_port())],
                         log={"access": "none", "loglevel": "warning"})
    return V2SyncProcess(config, env={"V2SYNC_CPU": cpu})  # whatever the caller's env says


def thread_cpus(pid: int) -> Set[str]:
    """Every thread's allowed-CPU list, e.g. {"1"} when all are pinned to CPU 1."""
    lists = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as status:
            for line in status:
                if line.startswith("Cpus_allowed_list:"):
                    lists.add(line.split(":", 1)[1].strip())
    return lists


@needs_two_cpus
def test_two_processes_pin_every_thread_each_to_its_own_cpu() -> None:
    with _process() as first, _process() as second:
        cpus = thread_cpus(first.pid), thread_cpus(second.pid)
    assert all(len(c) == 1 and next(iter(c)).isdigit() for c in cpus), cpus
    assert cpus[0] != cpus[1], f"both on {cpus[0]}: is another v2sync holding a CPU claim?"


@needs_two_cpus
def test_all_leaves_scheduling_to_the_kernel() -> None:
    mine = thread_cpus(os.getpid())
    with _process("all") as proc:
        assert thread_cpus(proc.pid) == mine


def _run(tmp_path: Path, *args: str, **env: str) -> "subprocess.CompletedProcess[str]":
    return run_cli("run", *args, cwd=tmp_path, **{"V2SYNC_CPU": "auto", **env})


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
