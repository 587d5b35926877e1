"""The metrics endpoint scraped by a real Prometheus (Debian's ``prometheus``, started here
with its own config and storage in a temp dir, on a free loopback port), answering queries
with the figures of the traffic the test sent."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from api_helpers import api_config, ports, socks_echo, socks_in
from support.peers import TcpEchoServer
from support.procs import V2SyncProcess

SCRAPE_INTERVAL = "1s"
READY_TIMEOUT = 60.0
ANSWER_TIMEOUT = 45.0
POLL = 0.5
SOCKS_BYTES = 50_000


def require_prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        message = "Debian's prometheus package is not installed"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return str(path)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    binary = require_prometheus()
    web_port, target_port = ports(2)
    (tmp_path / "prometheus.yml").write_text(
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: v2sync\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n")
    with open(tmp_path / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{web_port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        yield web_port, target_port, tmp_path / "prometheus.log"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def prometheus_query(web_port: int, expression: str) -> List[Any]:
    url = (f"http://127.0.0.1:{web_port}/api/v1/query?"
           + urllib.parse.urlencode({"query": expression}))
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for_answer(web_port: int, expression: str, log: Path) -> float:
    deadline = time.monotonic() + ANSWER_TIMEOUT
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = prometheus_query(web_port, expression)
        except OSError as e:  # not listening yet
            last = e
        else:
            if result:
                return float(result[0]["value"][1])
            last = result
        time.sleep(POLL)
    raise AssertionError(f"no answer to {expression!r}: {last}\n{log.read_text()[-2000:]}")


def test_prometheus_scrapes_and_answers(prometheus, tcp_echo: TcpEchoServer) -> None:
    web_port, metrics_port, log = prometheus
    api_port, socks_port = ports(2)
    config = api_config(api_port, [socks_in(socks_port)],
                        metrics={"listen": f"127.0.0.1:{metrics_port}"})
    with V2SyncProcess(config):
        socks_echo(socks_port, tcp_echo.address, SOCKS_BYTES)
        up = wait_for_answer(web_port, 'v2ray_traffic_uplink_bytes_total{dimension="inbound",'
                             f'target="socks-in"}} >= {SOCKS_BYTES + 13}', log)
        assert up == SOCKS_BYTES + 13  # greeting 3 + request 10 + payload
        with socket.create_connection(("127.0.0.1", socks_port), 5) as sock:
            sock.settimeout(5)
            sock.sendall(b"\x09 not SOCKS")  # version 9: the handshake fails
            assert sock.recv(64) == b""
        assert wait_for_answer(web_port, 'v2ray_traffic_downlink_bytes_total{dimension='
                               '"outbound",target="direct"}', log) == SOCKS_BYTES
        assert wait_for_answer(web_port, 'v2sync_routing_decisions_total{outbound="direct"}',
                               log) == 1
        assert wait_for_answer(web_port, 'up{job="v2sync"}', log) == 1
        assert wait_for_answer(web_port, "process_resident_memory_bytes", log) > 2**20
        assert wait_for_answer(web_port, 'v2sync_inbound_connections{inbound="socks-in"}',
                               log) == 0
        assert wait_for_answer(web_port, 'v2sync_inbound_handshake_failures_total{inbound='
                               '"socks-in"} >= 1', log) == 1
