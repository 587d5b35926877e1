"""Real proxy processes for scenario tests and the benchmark: the ``v2ray`` binary and v2sync.

Like v2ray's own harness (testing/scenarios/common.go) each process gets one JSON config
file, runs until SIGTERM, and is waited for. Unlike it we do not sleep a fixed 2 s: a process
is ready when its "started" log line appears or, failing that, when every TCP inbound port
in its config accepts a connection, whichever comes first, within a bounded deadline.

This module must not import pytest at module level: tools/bench.py uses it outside pytest.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, NoReturn, Optional, Pattern, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[2]

READY_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.01  # every process start in the suite waits half a poll on average
PROBE_TIMEOUT_SECONDS = 0.5
# Port probes leave connections in the proxy's access log ("rejected  connection closed
# during handshake", a dokodemo door's "accepted"), so they are only the fallback for a
# config whose log hides the ready line: a Warning-level line, shown unless the loglevel is
# error/none or the error log goes to a file. v2sync takes 0.5-1.1 s to start on a loaded
# 2-core machine: probing after a fixed grace put probe lines into access-log tests.
_QUIET_LOGLEVELS = {"error", "none"}
LOG_TAIL_CHARS = 4000

# main/main.go logs "V2Ray 4.34.0 started" at Warning level once core.Instance.Start returns.
V2RAY_READY = re.compile(r"V2Ray \S+ started")
V2SYNC_READY = re.compile(r"v2sync \S+ started")

# Transports that listen on UDP: a TCP probe cannot tell whether they are up.
_UDP_TRANSPORTS = {"kcp", "mkcp", "quic"}
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}

Endpoint = Tuple[str, int]


# Skips for a missing peer carry this, so the run's summary can count them (tests/conftest.py).
MISSING_PEER = "peer missing"


def find_v2ray() -> Optional[str]:
    """Path of the ``v2ray`` binary, or None if it is not installed."""
    return shutil.which("v2ray")


def require_v2ray() -> str:
    """Path of ``v2ray``; otherwise fail the test under CI (``$CI`` set) and skip it elsewhere."""
    path = find_v2ray()
    if path is not None:
        return path
    missing_peer("the real v2ray binary (Debian package v2ray, 4.34) is not on PATH")


def missing_peer(message: str) -> NoReturn:
    """Fail the test under CI (``$CI`` set), where every peer must be installed; skip it elsewhere."""
    import pytest  # only inside tests: bench.py imports this module without pytest

    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run every interop test", pytrace=False)
    pytest.skip(f"{MISSING_PEER}: {message}")
    raise AssertionError("unreachable")  # pytest.skip raises; this keeps type checkers happy


def _inbound_list(config: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    # 4.34 still reads the legacy "inbound" / "inboundDetour" keys next to "inbounds".
    found = list(config.get("inbounds") or [])
    if isinstance(config.get("inbound"), Mapping):
        found.append(config["inbound"])
    found.extend(config.get("inboundDetour") or [])
    return [item for item in found if isinstance(item, Mapping)]


def _first_port(port: Any) -> Optional[int]:
    if isinstance(port, int):
        return port
    if isinstance(port, str):
        head = port.split(",")[0].split("-")[0].strip()  # "1000-1010" or "80,443": probe the first
        return int(head) if head.isdigit() else None
    return None


def _listens_on_tcp(inbound: Mapping[str, Any]) -> bool:
    settings = inbound.get("settings") or {}
    if inbound.get("protocol") == "dokodemo-door" and settings.get("network", "tcp") == "udp":
        return False
    stream = inbound.get("streamSettings") or {}
    return str(stream.get("network", "tcp")).lower() not in _UDP_TRANSPORTS


def inbound_endpoints(config: Mapping[str, Any]) -> List[Endpoint]:
    """The (host, port) of every TCP inbound in ``config``, wildcards mapped to loopback."""
    endpoints = []
    for inbound in _inbound_list(config):
        port = _first_port(inbound.get("port"))
        listen = str(inbound.get("listen") or "127.0.0.1")
        if port is None or port == 0 or listen.startswith(("/", "@")) or not _listens_on_tcp(inbound):
            continue  # unix sockets, UDP transports and unresolved ports cannot be probed
        endpoints.append((_WILDCARDS.get(listen, listen), port))
    return endpoints


def accepts_tcp(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """True if a TCP connection to ``endpoint`` succeeds (it is closed again at once)."""
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            return True
    except OSError:
        return False


class ConfigProcess:
    """A proxy process started from a config dict; a context manager that always stops it.

    ``stop()`` sends SIGTERM, waits ``stop_timeout`` seconds, then SIGKILLs. If
    ``expect_exit_code`` is not None, stopping raises AssertionError (with the log tail) when
    the exit code differs or the process had to be killed.
    """

    name = "process"
    ready_pattern: Optional[Pattern[str]] = None

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
        expect_exit_code: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
    ):
        self.config: Dict[str, Any] = dict(config)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.expect_exit_code = expect_exit_code
        self.extra_env = dict(env or {})
        self.workdir: Optional[Path] = None
        self.killed = False
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._log_cache: Optional[str] = None

    # -- subclass hooks ------------------------------------------------------------------
    def command(self, config_path: Path) -> List[str]:
        raise NotImplementedError

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        return env

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / "config.json"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / "output.log"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def returncode(self) -> Optional[int]:
        return None if self._proc is None else self._proc.poll()

    @property
    def endpoints(self) -> List[Endpoint]:
        return inbound_endpoints(self.config)

    def start(self) -> "ConfigProcess":
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.config_path.write_text(json.dumps(self.config, indent=2))
        try:
            with open(self.log_path, "wb") as log:  # the child keeps its own copy of the fd
                self._proc = subprocess.Popen(
                    self.command(self.config_path),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.environment(),
                    cwd=str(self.workdir),
                )
        except OSError:  # e.g. the binary is missing: leave no temp dir behind
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        try:
            self._wait_ready()
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        started = time.monotonic()
        deadline = started + self.ready_timeout
        pending = self.endpoints
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode} before it was ready:\n"
                                   f"{self.log_tail()}")
            if self.ready_pattern is not None and self.ready_pattern.search(self.log_text()):
                return
            if self.ready_pattern is None or not self.shows_ready_line():
                pending = [ep for ep in pending if not accepts_tcp(ep)]
                if self.endpoints and not pending:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {self.ready_timeout} s "
                                   f"(ports still closed: {pending}):\n{self.log_tail()}")
            time.sleep(POLL_SECONDS)

    def shows_ready_line(self) -> bool:
        """Whether the config lets the ready line reach stdout (readiness then waits for it)."""
        log = self.config.get("log")
        if not isinstance(log, Mapping):
            return True
        level = str(log.get("loglevel") or "warning").lower()
        error = str(log.get("error") or "")
        return level not in _QUIET_LOGLEVELS and not error

    def stop(self, check: bool = True) -> Optional[int]:
        """Stop the process (idempotent) and return its exit code; see the class docstring."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                proc.kill()
                proc.wait(self.stop_timeout)
        if self._log_cache is None:
            self._log_cache = self._read_log()
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
            if check:
                self._check_exit(proc.returncode)
        return proc.returncode

    def _check_exit(self, code: int) -> None:
        if self.expect_exit_code is None:
            return
        if self.killed:
            raise AssertionError(f"{self.name} ignored SIGTERM for {self.stop_timeout} s and was killed:\n"
                                 f"{self.log_tail()}")
        if code != self.expect_exit_code:
            raise AssertionError(f"{self.name} exited with {code}, expected {self.expect_exit_code}:\n"
                                 f"{self.log_tail()}")

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr so far (kept after stop())."""
        return self._log_cache if self._log_cache is not None else self._read_log()

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log_text()[-chars:]

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        """Poll the log until ``pattern`` (a regex) matches; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log_text())
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in {self.name} log after {timeout} s:\n{self.log_tail()}")
            time.sleep(POLL_SECONDS)

    def __enter__(self) -> "ConfigProcess":
        return self.start()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.stop(check=exc_type is None)  # never mask the test's own failure


class V2RayProcess(ConfigProcess):
    """The real ``v2ray -config FILE`` (Debian 4.34). Exit code is not checked by default."""

    name = "v2ray"
    ready_pattern = V2RAY_READY

    def __init__(self, config: Mapping[str, Any], *, binary: Optional[str] = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.binary = binary or find_v2ray() or "v2ray"

    def command(self, config_path: Path) -> List[str]:
        return [self.binary, "-config", str(config_path)]


class V2SyncProcess(ConfigProcess):
    """``python -m v2sync run -c FILE`` from this checkout; must exit 0 on SIGTERM by default."""

    name = "v2sync"
    ready_pattern = V2SYNC_READY

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        expect_exit_code: Optional[int] = 0,
        python_options: Sequence[str] = (),
        **kwargs: Any,
    ):
        super().__init__(config, expect_exit_code=expect_exit_code, **kwargs)
        self.python_options = list(python_options)

    def command(self, config_path: Path) -> List[str]:
        return [sys.executable, *self.python_options, "-m", "v2sync", "run", "-c", str(config_path)]

    def environment(self) -> Dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = os.pathsep.join(_nonempty([str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file (and the ready check) at once
        return env


def _nonempty(parts: Iterable[str]) -> List[str]:
    return [part for part in parts if part]


def socks_freedom_config(port: int, *, listen: str = "127.0.0.1", loglevel: str = "warning",
                         access: Optional[str] = None, udp: bool = False) -> Dict[str, Any]:
    """The simplest proxy config: a no-auth SOCKS5 inbound on ``port`` -> freedom.

    ``access=None`` leaves the access log on stdout (the 4.34 default once a ``log`` section
    exists); ``"none"`` turns it off.
    """
    log: Dict[str, Any] = {"loglevel": loglevel}
    if access is not None:
        log["access"] = access
    return {
        "log": log,
        "inbounds": [{
            "tag": "socks-in", "listen": listen, "port": port, "protocol": "socks",
            "settings": {"auth": "noauth", "udp": udp},
        }],
        "outbounds": [{"tag": "direct", "protocol": "freedom", "settings": {}}],
    }
