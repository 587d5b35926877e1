"""A private nginx for the fallback tests (issue 15): Debian's binary, started by the test
with its own prefix and config in a temporary directory, on loopback ports, never the
system service. Its pages come from ``return`` directives (no files), and its access log
records ``$proxy_protocol_addr`` so a test checks a PROXY header by what nginx saw.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Mapping, Optional

from support.procs import accepts_tcp

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL = 0.05


def require_nginx() -> str:
    """Path of ``nginx``; fails the test under ``$CI`` and skips it elsewhere if missing."""
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                     else None)
    if path is not None:
        return path
    import pytest
    message = "nginx (Debian package nginx) is not installed"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run the fallback tests", pytrace=False)
    pytest.skip(message)
    raise AssertionError("unreachable")


class Nginx:
    """``servers``: name -> (listen directive, body template returned for every request).
    The access log line of each request is ``<server> <proxy_protocol_addr> <remote_addr>
    <request>``."""

    def __init__(self, servers: Mapping[str, str]):
        self.servers = dict(servers)
        self.prefix = Path(tempfile.mkdtemp(prefix="nginx-"))
        self.log_path = self.prefix / "access.log"
        self._proc: Optional[subprocess.Popen] = None

    def _config(self) -> str:
        blocks = []
        for name, listen in self.servers.items():
            blocks.append(f"""
    server {{
        listen {listen};
        access_log {self.log_path} fallback;
        location / {{ return 200 "{name} $request_uri $server_protocol\\n"; }}
    }}""")
        return f"""
daemon off;
master_process off;
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {self.prefix}/body;
    proxy_temp_path {self.prefix}/proxy;
    fastcgi_temp_path {self.prefix}/fastcgi;
    uwsgi_temp_path {self.prefix}/uwsgi;
    scgi_temp_path {self.prefix}/scgi;
    log_format fallback '$server_port pp=$proxy_protocol_addr:$proxy_protocol_port '
                        'remote=$remote_addr "$request"';
    {''.join(blocks)}
}}
"""

    def start(self) -> "Nginx":
        binary = require_nginx()
        conf = self.prefix / "nginx.conf"
        conf.write_text(self._config())
        self._proc = subprocess.Popen([binary, "-p", str(self.prefix), "-c", str(conf)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        ports = [int(m) for m in re.findall(r"127\.0\.0\.1:(\d+)", " ".join(self.servers.values()))]
        while not all(accepts_tcp(("127.0.0.1", p)) for p in ports):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start:\n{self.error_log()}")
            time.sleep(POLL)
        return self

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_lines(self) -> List[str]:
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(STOP_TIMEOUT)
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> "Nginx":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
