"""``v2sync top`` driven in tmux (send-keys, capture-pane), against v2sync and against the
real v2ray 4.34: the screen shows each inbound and outbound with the totals of the traffic
the test sent, a sparkline once traffic flows while it watches, the process's figures,
and ``q`` quits."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from typing import Iterator

import pytest

from api_helpers import api_config, ports, socks_echo, socks_in
from helpers_scenarios import REPO_ROOT
from support.peers import TcpEchoServer
from support.procs import V2RayProcess, V2SyncProcess
from v2sync.infra.control.top import human_bytes

SCREEN_TIMEOUT = 20.0
POLL = 0.3
FIRST_BYTES = 100_000
MORE_BYTES = 300_000
SOCKS_OVERHEAD = 13  # greeting 3 + IPv4 request 10


def require_tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is not installed", pytrace=False)
        pytest.skip("tmux is not installed")
    return str(path)


class Tmux:
    """A tmux server of the test's own (its own socket name), one session."""

    def __init__(self, binary: str):
        self.binary = binary
        self.socket = f"v2sync-test-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([self.binary, "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=10, check=check)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top").stdout

    def wait_for(self, *needles: str) -> str:
        deadline = time.monotonic() + SCREEN_TIMEOUT
        while True:
            text = self.screen()
            if all(n in text for n in needles):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{needles} not on screen:\n{text}")
            time.sleep(POLL)

    def alive(self) -> bool:
        return self.run("has-session", "-t", "top", check=False).returncode == 0


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    session = Tmux(require_tmux())
    yield session
    session.run("kill-server", check=False)


@pytest.mark.parametrize("implementation", ["v2sync", "v2ray"])
def test_top_shows_live_traffic(implementation: str, tmux: Tmux, tcp_echo: TcpEchoServer,
                                request) -> None:
    if implementation == "v2ray":
        request.getfixturevalue("v2ray_bin")
    api_port, socks_port = ports(2)
    server = (V2SyncProcess if implementation == "v2sync" else V2RayProcess)(
        api_config(api_port, [socks_in(socks_port)]))
    with server:
        socks_echo(socks_port, tcp_echo.address, FIRST_BYTES)
        command = (f"cd {REPO_ROOT} && exec {sys.executable} -m v2sync top "
                   f"--server 127.0.0.1:{api_port}")
        tmux.run("new-session", "-d", "-s", "top", "-x", "150", "-y", "50", command)
        first = human_bytes(FIRST_BYTES + SOCKS_OVERHEAD)
        screen = tmux.wait_for("socks-in", "direct", first, "threads", "RSS", "uptime")
        assert "api-in" in screen and "outbounds" in screen and "users" in screen
        socks_echo(socks_port, tcp_echo.address, MORE_BYTES)
        total = human_bytes(FIRST_BYTES + MORE_BYTES + 2 * SOCKS_OVERHEAD)
        screen = tmux.wait_for(total)
        row = next(line for line in screen.splitlines() if "socks-in" in line)
        assert any(block in row for block in "▂▃▄▅▆▇█"), row  # the burst in the sparkline
        tmux.run("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + SCREEN_TIMEOUT
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(POLL)
        assert not tmux.alive()
