"""Run ``v2sync run`` with no config (the embedded default: SOCKS on 127.0.0.1:1080, HTTP on
:8080) from a directory without one, and check both proxies with curl.

The ports are fixed, so when something else on the machine holds them the check runs in a
network namespace of its own instead of being skipped: ``python3 embedded_default_check.py
WORKDIR`` under ``unshare --net`` brings that namespace's loopback up and runs it there
(tests/scenarios/test_instance_lifecycle.py decides which).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
for _path in (str(TESTS_DIR.parent), str(TESTS_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import v2sync  # noqa: E402
from scenarios.helpers_scenarios import cli_env, curl_ok  # noqa: E402
from support.peers import HttpOrigin  # noqa: E402

DEFAULT_PORTS = (1080, 8080)  # the embedded default config's SOCKS and HTTP ports
READY_TIMEOUT = 15.0
SHUTDOWN_LIMIT = 5.0
STARTED_LINE = f"v2sync {v2sync.__version__} started"


def check(workdir: Path) -> None:
    """AssertionError unless the embedded default serves both proxies and exits 0 on SIGTERM."""
    log_path = workdir / "out.log"
    with HttpOrigin() as origin, open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "v2sync", "run"], cwd=str(workdir),
                                   env=cli_env(), stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while STARTED_LINE not in log_path.read_text(errors="replace"):
                assert process.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, log_path.read_text(errors="replace")
                time.sleep(0.05)
            assert curl_ok("-x", "http://127.0.0.1:8080", origin.url + "/") == b"Home"
            by_name = f"http://localhost:{origin.port}/"
            assert curl_ok("--socks5-hostname", "127.0.0.1:1080", by_name) == b"Home"
            process.send_signal(signal.SIGTERM)
            assert process.wait(SHUTDOWN_LIMIT) == 0, log_path.read_text(errors="replace")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(SHUTDOWN_LIMIT)


if __name__ == "__main__":  # inside a fresh network namespace: only its loopback exists
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    check(Path(sys.argv[1]))
    print("embedded default OK")
