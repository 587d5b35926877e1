"""A log nobody reads does not stop the proxy.

``v2sync run`` writes its logs to stdout by default. With a reader that stops (a terminal
paused with Ctrl-S, a pipe nobody reads) every thread that logged waited in its write:
the access log's 64 KiB pipe filled after ~1,000 connections and no connection was served
any more, where 4.34 drops lines once its log buffer is full and goes on. Each log now has
a writer thread behind a bounded queue (``app/log/setup.py`` ``LineQueue``).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from support.peers import TcpEchoServer, free_port
from support.procs import REPO_ROOT

CONNECTIONS = 2000  # ~130 KiB of access lines: twice the pipe's 64 KiB
READY_WAIT = 10.0
IO_TIMEOUT = 3.0


def test_connections_go_on_while_nobody_reads_stdout(tmp_path: Path) -> None:
    with TcpEchoServer(max_connections=CONNECTIONS + 16) as echo:
        _connections_through(tmp_path, echo)


def _connections_through(tmp_path: Path, tcp_echo: TcpEchoServer) -> None:
    port = free_port()
    config = {"log": {"loglevel": "info"},
              "inbounds": [{"protocol": "dokodemo-door", "listen": "127.0.0.1", "port": port,
                            "settings": {"address": "127.0.0.1", "port": tcp_echo.port,
                                         "network": "tcp"}}],
              "outbounds": [{"protocol": "freedom"}]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    unread, stdout = os.pipe()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "v2sync", "run", "-c", str(path)],
                            stdout=stdout, stderr=stdout, env=env)
    os.close(stdout)
    try:
        _wait_listening(port)
        for i in range(CONNECTIONS):
            with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as sock:
                sock.settimeout(IO_TIMEOUT)
                sock.sendall(b"x")
                assert sock.recv(1) == b"x", f"connection {i}"
    finally:
        proc.kill()
        proc.wait(READY_WAIT)
        os.close(unread)


def _wait_listening(port: int) -> None:
    """Until the inbound accepts (its ready line goes to the pipe nobody reads)."""
    for _ in range(int(READY_WAIT / 0.05)):
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")
