"""Self-tests of the harness: the origin servers, the resource helpers and the real-v2ray runner.

The last tests start the real ``v2ray`` and v2sync (SOCKS inbound -> freedom) and reach HttpOrigin
through it with PySocks and with curl, proving the interop machinery end to end. They fail
rather than skip when ``$CI`` is set and v2ray is missing (see ``require_v2ray``).
"""
from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path
import urllib.error
import urllib.request
from typing import Any, Callable, List, Tuple

import pytest
import socks

from support import peers, procs
from support.peers import (
    CONFIG_PORT_FLOOR,
    XOR_C,
    BulkSource,
    HttpOrigin,
    TcpEchoServer,
    UdpEchoServer,
    _ephemeral_floor,
    free_port,
    free_udp_port,
    pattern_bytes,
    xor_bytes,
)
from support.procs import V2RayProcess, V2SyncProcess, inbound_endpoints, require_v2ray, socks_freedom_config
from support.resources import snapshot, wait_for_snapshot

TIMEOUT = 5.0


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = sock.recv(min(n, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock: socket.socket, limit: int = 16 * 1024 * 1024) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


# -- TCP echo ------------------------------------------------------------------------------

def test_tcp_echo_round_trip(tcp_echo: TcpEchoServer) -> None:
    payload = bytes(range(256)) * 40
    with socket.create_connection(tcp_echo.address, timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the server closes after the client's EOF
    assert tcp_echo.accepted == 1


def test_tcp_echo_xor_matches_v2ray_convention() -> None:
    with TcpEchoServer(xor=XOR_C) as server, socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(b"abc\x00")
        assert recv_exactly(sock, 4) == b"\x02\x01\x00c"
    assert xor_bytes(xor_bytes(b"round trip")) == b"round trip"


def test_tcp_server_speaks_first_and_closes_first() -> None:
    with TcpEchoServer(send_first=b"hello", close_after_first=True) as server:
        with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
            assert recv_exactly(sock, 5) == b"hello"
            sock.sendall(b"x")
            assert recv_until_eof(sock) == b"x"  # echoed once, then EOF from the server


def test_tcp_echo_over_ipv6() -> None:
    with TcpEchoServer(host="::1") as server, socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(b"six")
        assert recv_exactly(sock, 3) == b"six"


def test_connections_beyond_the_cap_are_refused() -> None:
    with TcpEchoServer(max_connections=1) as server:
        with socket.create_connection(server.address, timeout=TIMEOUT) as first:
            first.sendall(b"1")
            assert recv_exactly(first, 1) == b"1"
            with socket.create_connection(server.address, timeout=TIMEOUT) as second:
                assert recv_until_eof(second) == b""
        assert server.rejected == 1


def test_close_wakes_held_connections_and_joins_threads() -> None:
    before = snapshot()
    server = TcpEchoServer(timeout=60.0)
    server.start()
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(b"held")
        recv_exactly(sock, 4)
        started = time.monotonic()
        server.close()  # must not wait for the 60 s socket timeout
        assert time.monotonic() - started < 2.0
        assert sock.recv(1) == b""
    wait_for_snapshot(before, timeout=5.0)


def test_wait_for_baseline_names_leaked_threads() -> None:
    before = snapshot()
    with TcpEchoServer() as server:
        with pytest.raises(AssertionError, match="tcp-echo-accept"):
            wait_for_snapshot(before, timeout=0.2)
        assert server.port > 0


# -- UDP echo and bulk ---------------------------------------------------------------------

def test_udp_echo_round_trip(udp_echo: UdpEchoServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(b"d" * 2048, udp_echo.address)
        data, peer = sock.recvfrom(4096)
    assert data == b"d" * 2048
    assert peer == udp_echo.address
    assert udp_echo.datagrams == 1


def test_udp_echo_xor() -> None:
    with UdpEchoServer(xor=XOR_C) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(b"ping", server.address)
        assert sock.recvfrom(2048)[0] == xor_bytes(b"ping")


def test_bulk_source_sends_the_pattern() -> None:
    size = 3 * 1024 * 1024 + 17  # not a multiple of the send block
    with BulkSource(size) as server, socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        assert recv_until_eof(sock) == pattern_bytes(size)


def test_free_ports_are_bindable() -> None:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", free_port()))
        udp.bind(("127.0.0.1", free_udp_port()))


def test_a_free_port_is_free_for_udp_too_and_outside_the_ephemeral_range() -> None:
    """Outgoing connections take ephemeral ports at any moment; a config's port must not be
    one of them, or the proxy's bind can lose the race (seen in CI)."""
    port = free_port()
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", port))
        udp.bind(("127.0.0.1", port))
    if _ephemeral_floor() > CONFIG_PORT_FLOOR + 1:
        assert CONFIG_PORT_FLOOR <= port < _ephemeral_floor()


def test_two_picks_before_either_is_bound_never_give_the_same_port(monkeypatch) -> None:
    """A chain picks its server's and its client's ports, then starts them: a draw that
    gives the same free number twice made the second process fail to bind (seen in CI)."""
    first = free_port()
    draw = peers.random.randint
    repeats = [first, first]  # then fair draws again
    monkeypatch.setattr(peers.random, "randint",
                        lambda low, high: repeats.pop() if repeats else draw(low, high))
    assert free_port() != first and not repeats


# -- HTTP origin ---------------------------------------------------------------------------

def fetch(url: str, data: Any = None) -> Tuple[int, bytes]:
    with urllib.request.urlopen(url, data=data, timeout=TIMEOUT) as response:
        return response.status, response.read()


def test_http_origin_routes(http_origin: HttpOrigin) -> None:
    assert fetch(http_origin.url + "/") == (200, b"Home")
    assert fetch(http_origin.url + "/bytes/100000") == (200, pattern_bytes(100000))
    assert fetch(http_origin.url + "/echo", data=b"posted body") == (200, b"posted body")
    assert fetch(http_origin.url + "/slow/50") == (200, b"slow")
    with pytest.raises(urllib.error.HTTPError) as missing:
        fetch(http_origin.url + "/nope")
    assert missing.value.code == 404
    missing.value.close()
    assert [r.path for r in http_origin.requests][:2] == ["/", "/bytes/100000"]
    assert http_origin.requests[2].header("content-length") == str(len(b"posted body"))


def test_http_origin_keep_alive_and_close(http_origin: HttpOrigin) -> None:
    conn = http.client.HTTPConnection(http_origin.host, http_origin.port, timeout=TIMEOUT)
    try:
        for _ in range(3):
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"Home"
        conn.request("GET", "/close")
        with pytest.raises(http.client.RemoteDisconnected):
            conn.getresponse()
    finally:
        conn.close()
    assert http_origin.accepted == 1  # all four requests used one connection


def test_http_origin_custom_route() -> None:
    def teapot(handler: Any) -> None:
        handler.reply(418, b"tea")

    with HttpOrigin(routes={"/tea": teapot}) as origin:
        with pytest.raises(urllib.error.HTTPError) as error:
            fetch(origin.url + "/tea")
        assert error.value.code == 418
        assert error.value.read() == b"tea"
        error.value.close()


# -- process runner (no process needed) ----------------------------------------------------

def test_inbound_endpoints_from_config() -> None:
    config = {
        "inbounds": [
            {"port": 1080, "protocol": "socks"},
            {"port": "2000-2010", "listen": "0.0.0.0", "protocol": "vmess"},
            {"port": 53, "protocol": "dokodemo-door", "settings": {"network": "udp"}},
            {"port": 443, "protocol": "vmess", "streamSettings": {"network": "kcp"}},
            {"port": 8080, "listen": "::", "protocol": "http"},
        ],
        "inboundDetour": [{"port": 9000, "protocol": "socks"}],
    }
    assert inbound_endpoints(config) == [
        ("127.0.0.1", 1080), ("127.0.0.1", 2000), ("::1", 8080), ("127.0.0.1", 9000)
    ]


def test_require_v2ray_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procs, "find_v2ray", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_v2ray()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_v2ray()


class ScriptProcess(V2SyncProcess):
    """V2SyncProcess's lifecycle around a stand-in script, to test the runner itself."""

    def __init__(self, script: str, **kwargs: Any):
        super().__init__({"marker": "from-config"}, **kwargs)
        self.script = script

    def command(self, config_path: Path) -> List[str]:
        return [sys.executable, "-c", self.script, str(config_path)]


STARTED_THEN_WAIT = (
    "import json, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, {handler})\n"
    "print(json.load(open(sys.argv[1]))['marker'])\n"
    "print('v2sync 9.9.9 started', flush=True)\n"
    "time.sleep(30)\n"
)


def test_runner_ready_on_log_line_and_clean_exit() -> None:
    with ScriptProcess(STARTED_THEN_WAIT.format(handler="lambda *a: sys.exit(0)")) as process:
        assert process.endpoints == []  # readiness came from the log line alone
        assert "from-config" in process.log_text()
    assert process.returncode == 0


def test_runner_kills_a_process_that_ignores_sigterm() -> None:
    process = ScriptProcess(STARTED_THEN_WAIT.format(handler="signal.SIG_IGN"), stop_timeout=0.5)
    process.start()
    with pytest.raises(AssertionError, match="ignored SIGTERM"):
        process.stop()
    assert process.killed


def test_runner_reports_early_exit() -> None:
    process = ScriptProcess("import sys; print('boom'); sys.exit(3)")
    with pytest.raises(RuntimeError, match="exited with 3 before it was ready(.|\\n)*boom"):
        process.start()


# -- the real v2ray ------------------------------------------------------------------------

def http_get_via_pysocks(proxy_port: int, origin: HttpOrigin, path: str) -> bytes:
    sock = socks.socksocket()
    try:
        sock.settimeout(TIMEOUT)
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", proxy_port)
        sock.connect(origin.address)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {origin.host}\r\nConnection: close\r\n\r\n".encode())
        response = recv_until_eof(sock)
    finally:
        sock.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return body


def curl(proxy_port: int, url: str, *extra: str) -> bytes:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--socks5-hostname", f"127.0.0.1:{proxy_port}", *extra, url],
        capture_output=True, timeout=20, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def exercise_socks_proxy(port: int, origin: HttpOrigin) -> None:
    """The same four requests through any SOCKS5 -> freedom proxy on ``port``."""
    assert http_get_via_pysocks(port, origin, "/") == b"Home"
    assert http_get_via_pysocks(port, origin, "/bytes/300000") == pattern_bytes(300000)
    assert curl(port, origin.url + "/") == b"Home"
    assert curl(port, origin.url + "/echo", "--data-binary", "via curl") == b"via curl"
    assert origin.accepted == 4


def test_real_v2ray_socks_to_freedom(
    v2ray_process: Callable[..., V2RayProcess], http_origin: HttpOrigin
) -> None:
    port = free_port()
    proxy = v2ray_process(socks_freedom_config(port))
    exercise_socks_proxy(port, http_origin)
    proxy.wait_for_log(rf"accepted tcp:127\.0\.0\.1:{http_origin.port}")  # the access log


def test_v2sync_socks_to_freedom(
    v2sync_process: Callable[..., V2SyncProcess], http_origin: HttpOrigin
) -> None:
    port = free_port()
    v2sync_process(socks_freedom_config(port))  # teardown asserts a clean exit 0 on SIGTERM
    exercise_socks_proxy(port, http_origin)


def test_v2ray_process_reports_bad_config(v2ray_bin: str) -> None:
    broken = V2RayProcess({"inbounds": [{"port": free_port(), "protocol": "no-such"}]}, binary=v2ray_bin)
    with pytest.raises(RuntimeError, match="exited with 23"):
        broken.start()
    assert "no-such" in broken.log_text()


def test_v2ray_process_checks_exit_code(v2ray_bin: str) -> None:
    process = V2RayProcess(socks_freedom_config(free_port()), binary=v2ray_bin, expect_exit_code=1)
    process.start()
    # 4.34's main.go logs "started", runs a GC, and only then takes SIGTERM (signal.Notify):
    # a SIGTERM in between ends it with the signal's code (-15, seen in CI), not 0.
    with pytest.raises(AssertionError, match=r"exited with (0|-15), expected 1") as raised:
        process.stop()
    code = process.stop()  # idempotent: the second call just reports
    assert f"exited with {code}," in str(raised.value)
    assert "V2Ray 4.34.0 started" in process.log_text()  # kept after the temp dir is gone
