"""Shared fixtures: in-test origin servers and real proxy processes (tests/support/).

``tests/`` goes on sys.path so any test can ``from support.peers import TcpEchoServer``;
the repository root goes there too so ``import v2sync`` works without installing it.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Mapping

import pytest

TESTS_DIR = Path(__file__).resolve().parent
for _path in (str(TESTS_DIR.parent), str(TESTS_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from support.certs import Pki, make_pki  # noqa: E402
from support.peers import HttpOrigin, TcpEchoServer, UdpEchoServer  # noqa: E402
from support.procs import MISSING_PEER, ConfigProcess, V2RayProcess, V2SyncProcess, require_v2ray  # noqa: E402

ProcessFactory = Callable[..., ConfigProcess]


@pytest.fixture(scope="session")
def v2ray_bin() -> str:
    """Path of the real v2ray binary; skips the test (fails it under ``$CI``) if missing."""
    return require_v2ray()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA and a leaf certificate for ``v2sync.test``/``localhost``/127.0.0.1."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tcp_echo() -> Iterator[TcpEchoServer]:
    """A plain TCP echo server on 127.0.0.1 (build ``TcpEchoServer(xor=XOR_C)`` for XOR)."""
    with TcpEchoServer() as server:
        yield server


@pytest.fixture
def udp_echo() -> Iterator[UdpEchoServer]:
    """A UDP echo server on 127.0.0.1, 2 KiB per datagram."""
    with UdpEchoServer() as server:
        yield server


@pytest.fixture
def http_origin() -> Iterator[HttpOrigin]:
    """A keep-alive HTTP/1.1 origin on 127.0.0.1 (routes: see HttpOrigin)."""
    with HttpOrigin() as server:
        yield server


def _stop_all(processes: List[ConfigProcess]) -> None:
    failures = []
    for process in reversed(processes):  # stop in reverse start order: clients before servers
        try:
            process.stop()
        except AssertionError as error:
            failures.append(str(error))
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


@pytest.fixture
def v2ray_process(v2ray_bin: str) -> Iterator[ProcessFactory]:
    """Factory ``start(config: dict, **kwargs) -> V2RayProcess`` (ready on return, stopped at teardown)."""
    started: List[ConfigProcess] = []

    def start(config: Mapping[str, Any], **kwargs: Any) -> ConfigProcess:
        process = V2RayProcess(config, binary=v2ray_bin, **kwargs)
        started.append(process)
        return process.start()

    yield start
    _stop_all(started)


@pytest.fixture
def v2sync_process() -> Iterator[ProcessFactory]:
    """Factory ``start(config: dict, **kwargs) -> V2SyncProcess``; teardown asserts exit code 0.

    Pass ``expect_exit_code=None`` (or another code) for a test that expects a crash.
    """
    started: List[ConfigProcess] = []

    def start(config: Mapping[str, Any], **kwargs: Any) -> ConfigProcess:
        process = V2SyncProcess(config, **kwargs)
        started.append(process)
        return process.start()

    yield start
    _stop_all(started)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """Say loudly how many interop tests a missing peer skipped: such a run is green without
    having compared anything with 4.34 (under ``CI`` they fail instead)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if MISSING_PEER in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep("!", f"{len(skipped)} interop tests skipped because a peer is "
                                        "missing; set CI=1 to make that a failure", red=True)
