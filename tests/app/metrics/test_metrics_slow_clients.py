"""The metrics listener against clients that never finish a request (real loopback sockets,
an in-process Instance): each is closed by ``REQUEST_DEADLINE``, a byte trickled every
second does not stretch that, no more than ``MAX_CONNECTIONS`` threads are ever taken, and a
normal scrape works while slow clients are held and after they are gone."""
from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
import urllib.request
from typing import Iterator, List

import pytest
from support.resources import snapshot, wait_for_snapshot

from v2sync.app import metrics
from v2sync.app.metrics import MAX_CONNECTIONS
from v2sync.core import Instance
from v2sync.infra.conf.builder import config_from_dict

PARTIAL = b"GET /metr"  # half a request line, never finished
SLOW_CLIENTS = 10  # under the cap: a scrape still gets a slot
PAST_CAP = 8
# The request's deadline, shortened for the suite's time (5 s in the code: the same path).
REQUEST_DEADLINE = 2.0
CLOSE_LIMIT = 2 * REQUEST_DEADLINE  # the server closes a slow client within this
CONNECT_PACE = 0.02  # lets the accept loop keep up (a full backlog drops SYNs: 1 s retries)
AT_ONCE = 1.0  # "closed at once": well under REQUEST_DEADLINE
TRICKLE_PACE = 0.5


@pytest.fixture
def metrics_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(metrics, "REQUEST_DEADLINE", REQUEST_DEADLINE)
    monkeypatch.setattr(metrics._Handler, "timeout", REQUEST_DEADLINE)
    instance = Instance(config_from_dict({"outbounds": [{"protocol": "freedom"}],
                                          "metrics": {"listen": "127.0.0.1:0"}}))
    instance.start()
    try:
        yield instance.metrics.port
    finally:
        instance.close(grace=0)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def open_clients(stack: contextlib.ExitStack, port: int, count: int,
                 data: bytes) -> List[socket.socket]:
    clients = []
    for _ in range(count):
        client = stack.enter_context(socket.create_connection(("127.0.0.1", port), 5))
        client.sendall(data)
        clients.append(client)
        time.sleep(CONNECT_PACE)
    return clients


def closed_by_server(client: socket.socket, timeout: float) -> bool:
    """True if the server ends the connection (EOF or reset) within ``timeout`` s."""
    client.settimeout(max(timeout, 0.001))
    try:
        return client.recv(64) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def wait_closed(clients: List[socket.socket], count: int,
                timeout: float) -> List[socket.socket]:
    """Poll (bounded) until ``count`` of ``clients`` are ended by the server; those ended."""
    deadline = time.monotonic() + timeout
    waiting: List[socket.socket] = list(clients)
    ended: List[socket.socket] = []
    while len(ended) < count and waiting and time.monotonic() < deadline:
        ready, _, _ = select.select(waiting, [], [], deadline - time.monotonic())
        for client in ready:
            waiting.remove(client)
            if closed_by_server(client, 0):
                ended.append(client)
    return ended


def test_unfinished_requests_are_closed_and_scrapes_still_work(metrics_port: int) -> None:
    before = snapshot()
    with contextlib.ExitStack() as stack:
        started = time.monotonic()
        clients = open_clients(stack, metrics_port, SLOW_CLIENTS, PARTIAL)
        assert "v2ray_up 1.0" in scrape(metrics_port)  # while the slow ones are held
        for client in clients:
            assert closed_by_server(client, started + CLOSE_LIMIT - time.monotonic())
        assert time.monotonic() - started >= REQUEST_DEADLINE * 0.9  # not closed early
    assert "v2ray_up 1.0" in scrape(metrics_port)
    wait_for_snapshot(before)


def test_a_trickled_request_is_closed_at_the_deadline(metrics_port: int) -> None:
    """One absolute deadline for the request, not a timeout per read."""
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", metrics_port), 5) as client:
        started = time.monotonic()
        for byte in request:  # one byte each TRICKLE_PACE: bounded by the request's length
            try:
                client.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if closed_by_server(client, TRICKLE_PACE):
                break
        elapsed = time.monotonic() - started
    assert elapsed < CLOSE_LIMIT, f"still open after {elapsed:.1f} s"


def test_connections_past_the_cap_are_closed_at_once_and_take_no_thread(
        metrics_port: int) -> None:
    before = snapshot()
    with contextlib.ExitStack() as stack:
        clients = open_clients(stack, metrics_port, MAX_CONNECTIONS + PAST_CAP, b"")
        ended = wait_closed(clients, PAST_CAP, AT_ONCE)
        assert len(ended) == PAST_CAP
        assert threading.active_count() - before.threads <= MAX_CONNECTIONS
        held = [client for client in clients if client not in ended]
        assert len(wait_closed(held, len(held), CLOSE_LIMIT)) == len(held)
    wait_for_snapshot(before, CLOSE_LIMIT)
    assert "v2ray_up 1.0" in scrape(metrics_port)
