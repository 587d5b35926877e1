"""Instance lifecycle and the CLI, end to end (issue 2, parts 4 and 11, and the CLI list).

The process tests run ``python -m v2sync`` for real: the "started" line, SIGTERM/SIGINT while
a connection is held (exit 0 within a few seconds, the held connection closed), ``test`` /
``version`` / ``uuid``, V2Ray's ``-config``/``-test`` habits, the embedded default from another
working directory, and the access log format. In-process tests check that ``close()`` joins
every thread with 20 live relayed connections and that a failed start binds nothing.
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
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping

import pytest
from scenarios.helpers_scenarios import (connect, curl_ok, get_request, http_inbound,
                                         is_listening, make_config, port_of, read_http_response,
                                         read_until_closed, recv_exact, run_cli, socks5_tunnel,
                                         socks_inbound)
from support.peers import HttpOrigin, TcpEchoServer, XOR_C, free_port, xor_bytes
from scenarios import embedded_default_check
from support.procs import missing_peer
from support.resources import snapshot, wait_for_snapshot

import v2sync
from v2sync.common.errors import V2SyncError
from v2sync.core import Instance
from v2sync.infra.conf.builder import config_from_dict

EXIT_CONFIG_ERROR = 23
EXIT_START_FAILURE = 255
# SIGTERM -> listeners closed, up to 2 s grace for live connections, threads joined.
SHUTDOWN_LIMIT = 5.0
LIVE_CONNECTIONS = 20
CLOSE_LIMIT = 10.0  # Instance.close(): 2 s grace + bounded joins (a hang check)
LONG_GRACE = 30.0  # longer than CLOSE_LIMIT: a close that waited it out fails the check
PACED_ROUNDS = 15  # 1 KiB echoes 0.1 s apart during the grace: bytes keep moving for 1.5 s
PACE = 0.1
LINGER = 30  # seconds of uplinkOnly/downlinkOnly: longer than any close may take
DEFAULT_PORTS = embedded_default_check.DEFAULT_PORTS
NETNS_TIMEOUT = 60.0
READY_TIMEOUT = 15.0
FAILED_START_REPEATS = 20
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
STARTED_LINE = f"v2sync {v2sync.__version__} started"


def _write(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


def _socks_config(port: int, **log: Any) -> Dict[str, Any]:
    return make_config([socks_inbound(port=port)], log=log or {"access": "none", "loglevel": "warning"})


def _wait_exit(process, timeout: float) -> float:
    """Seconds until ``process`` exited; AssertionError after ``timeout``."""
    started = time.monotonic()
    while process.returncode is None:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"still running {timeout} s after the signal:\n{process.log_tail()}")
        time.sleep(0.05)
    return time.monotonic() - started


# -- run: started line, signals -------------------------------------------------------------

def test_run_prints_started_line_and_serves(v2sync_process, http_origin: HttpOrigin) -> None:
    port = free_port()
    process = v2sync_process(_socks_config(port))
    assert STARTED_LINE in process.log_text()
    assert curl_ok("--socks5", f"127.0.0.1:{port}", http_origin.url + "/") == b"Home"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_zero_and_closes_held_connection(signum: int, v2sync_process) -> None:
    port = free_port()
    with TcpEchoServer(xor=XOR_C) as echo:
        process = v2sync_process(_socks_config(port))
        with socks5_tunnel(port, "127.0.0.1", echo.port) as held:
            held.sendall(b"still here")
            assert recv_exact(held, 10) == xor_bytes(b"still here")
            os.kill(process.pid, signum)
            assert _wait_exit(process, SHUTDOWN_LIMIT) < SHUTDOWN_LIMIT
            assert process.returncode == 0, process.log_tail()
            assert read_until_closed(held, 1.0) == b""  # the held connection was closed
        assert not is_listening(port)


# -- in-process close() -----------------------------------------------------------------------

def test_close_with_live_connections_joins_every_thread() -> None:
    with TcpEchoServer(xor=XOR_C, max_connections=2 * LIVE_CONNECTIONS) as echo:
        before = snapshot()
        instance = Instance(config_from_dict(make_config([socks_inbound(), http_inbound()])))
        instance.start()
        held: List[socket.socket] = []
        try:
            for i in range(LIVE_CONNECTIONS):
                held.append(_open_tunnel(instance, echo.port, use_http=bool(i % 2)))
            assert instance.inbounds.live_count() == LIVE_CONNECTIONS
            started = time.monotonic()
            instance.close()
            assert time.monotonic() - started < CLOSE_LIMIT
            for sock in held:
                assert read_until_closed(sock, 1.0) == b""
        finally:
            for sock in held:
                sock.close()
            if instance.running:
                instance.close()
        assert instance.inbounds.live_count() == 0
        wait_for_snapshot(before, 10.0)


def test_close_does_not_wait_the_grace_out_for_idle_connections() -> None:
    """A held connection that moves nothing (a browser's kept-alive one) is closed once the
    process has been quiet for a moment, not after the whole grace."""
    with TcpEchoServer(xor=XOR_C) as echo:
        instance = Instance(config_from_dict(make_config([socks_inbound()])))
        instance.start()
        try:
            with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", echo.port) as held:
                held.sendall(b"ping")
                assert recv_exact(held, 4) == xor_bytes(b"ping")
                started = time.monotonic()
                instance.close(grace=LONG_GRACE)
                assert time.monotonic() - started < CLOSE_LIMIT
                assert read_until_closed(held, 1.0) == b""
        finally:
            if instance.running:
                instance.close()


def test_a_connection_moving_bytes_keeps_the_grace() -> None:
    """Echoes 0.1 s apart all through the grace's first 1.5 s: none is cut by the quiet
    rule, and the connection is closed once it goes quiet."""
    with TcpEchoServer(xor=XOR_C) as echo:
        instance = Instance(config_from_dict(make_config([socks_inbound()])))
        instance.start()
        closer = threading.Thread(target=instance.close, kwargs={"grace": LONG_GRACE},
                                  name="test-close")
        try:
            with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1", echo.port) as held:
                closer.start()
                for i in range(PACED_ROUNDS):
                    chunk = bytes([i]) * 1024
                    held.sendall(chunk)
                    assert recv_exact(held, len(chunk)) == xor_bytes(chunk), f"round {i}"
                    time.sleep(PACE)
                assert read_until_closed(held, CLOSE_LIMIT) == b""
        finally:
            if closer.is_alive():
                closer.join(CLOSE_LIMIT)
            elif instance.running:
                instance.close()
        assert not closer.is_alive()


SLOW_ANSWER = 0.3  # the upstream SOCKS server's wait before it answers a CONNECT
DISPATCHED = 0.1  # after the SOCKS reply: the dial has started (and QUIET_GRACE is 0.5 s)


def _slow_socks_server(listener: socket.socket) -> None:
    """One SOCKS5 exchange that answers the CONNECT SLOW_ANSWER s late, then says hello."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(CLOSE_LIMIT)
        recv_exact(conn, 3)
        conn.sendall(b"\x05\x00")
        recv_exact(conn, 10)  # an IPv4 CONNECT
        time.sleep(SLOW_ANSWER)
        conn.sendall(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x50hello")
        read_until_closed(conn, CLOSE_LIMIT)


def test_a_connection_still_dialling_keeps_the_grace() -> None:
    """SIGTERM while the outbound waits for its server's answer (its start runs in the
    inbound's thread, before any relay exists): the connection gets the grace as one whose
    dial ran in a pooled thread did, and the answer reaches the client."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        config = make_config([socks_inbound()], [{"protocol": "socks", "settings": {
            "servers": [{"address": "127.0.0.1", "port": listener.getsockname()[1]}]}}])
        server = threading.Thread(target=_slow_socks_server, args=(listener,),
                                  name="test-slow-socks")
        server.start()
        instance = Instance(config_from_dict(config))
        instance.start()
        closer = threading.Thread(target=instance.close, kwargs={"grace": LONG_GRACE},
                                  name="test-close")
        try:
            with socks5_tunnel(port_of(instance, "socks-in"), "1.2.3.4", 80) as held:
                # The SOCKS reply precedes the dispatch: a close right behind it could come
                # before the connection has anything that counts as live.
                time.sleep(DISPATCHED)
                closer.start()  # the upstream has not answered yet
                assert recv_exact(held, 5) == b"hello"
        finally:
            closer.join(CLOSE_LIMIT)
            server.join(CLOSE_LIMIT)
        assert not closer.is_alive() and not server.is_alive()


def test_close_ends_an_outbound_waiting_for_its_origin_after_the_client_is_done() -> None:
    """The client half-closed (its request side ended cleanly) and the origin never answers:
    the outbound's response side waits in recv, where interrupting the link cannot reach,
    for downlinkOnly (30 s here). close() fires its timer, which aborts its socket too, so
    every thread is joined within close()'s deadline instead of after the linger."""
    config = make_config([socks_inbound()])
    config["policy"] = {"levels": {"0": {"uplinkOnly": LINGER, "downlinkOnly": LINGER}}}
    with socket.create_server(("127.0.0.1", 0)) as silent_origin:  # accepts in the backlog only
        before = snapshot()
        instance = Instance(config_from_dict(config))
        instance.start()
        try:
            with socks5_tunnel(port_of(instance, "socks-in"), "127.0.0.1",
                               silent_origin.getsockname()[1]) as held:
                held.sendall(b"request")
                # The outbound's request side ("-up"), the inbound's response side ("-down").
                wait_for_relays(instance, lambda n: n == 2)
                held.shutdown(socket.SHUT_WR)  # the client is done; the answer may linger
                wait_for_relays(instance, lambda n: n == 1, "-up")  # the request side ended
                started = time.monotonic()
                instance.close()
                elapsed = time.monotonic() - started
                assert read_until_closed(held, 1.0) == b""
        finally:
            if instance.running:
                instance.close()
        assert elapsed < CLOSE_LIMIT
        wait_for_snapshot(before, CLOSE_LIMIT)


def wait_for_relays(instance: Instance, done: Callable[[int], bool], gone: str = "") -> None:
    """Until ``done(n)`` for the number of relays' pooled directions live (tasks "relay-*"),
    and none is left whose name ends with ``gone``."""
    deadline = time.monotonic() + READY_TIMEOUT

    def relays():
        return [t.name for t in instance.workers.live() if t.name.startswith("relay-")]
    while not (done(len(relays())) and not (gone and any(n.endswith(gone) for n in relays()))):
        assert time.monotonic() < deadline, [t.name for t in instance.workers.live()]
        time.sleep(0.05)


def _open_tunnel(instance: Instance, echo_port: int, use_http: bool) -> socket.socket:
    """A relayed connection to the echo server (SOCKS5 or HTTP CONNECT), checked with a round trip."""
    if use_http:
        sock = connect(port_of(instance, "http-in"))
        sock.sendall(f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response, rest = read_http_response(sock)
        assert response.status == 200 and rest == b""
    else:
        sock = connect(port_of(instance, "socks-in"))
        sock.sendall(b"\x05\x01\x00")
        assert recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + echo_port.to_bytes(2, "big"))
        assert recv_exact(sock, 10)[1] == 0
    sock.sendall(b"ping")
    assert recv_exact(sock, 4) == xor_bytes(b"ping")
    return sock


def test_failed_start_binds_nothing() -> None:
    # Repeated: start() fails within a millisecond, racing whatever threads start() began.
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen(1)
        busy = occupier.getsockname()[1]
        before = snapshot()
        for _ in range(FAILED_START_REPEATS):
            first = free_port()
            config = make_config([http_inbound(port=first), socks_inbound(port=busy)])
            instance = Instance(config_from_dict(config))
            with pytest.raises(V2SyncError, match="failed to listen"):
                instance.start()
            assert not is_listening(first), "the first inbound was left listening"
        wait_for_snapshot(before, 10.0)


def test_cli_run_with_busy_port_exits_and_binds_nothing(tmp_path: Path) -> None:
    first = free_port()
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen(1)
        config = make_config([http_inbound(port=first), socks_inbound(port=occupier.getsockname()[1])])
        result = run_cli("run", "-c", str(_write(tmp_path / "busy.json", config)), cwd=tmp_path)
    assert result.returncode == EXIT_START_FAILURE, result.stdout
    assert STARTED_LINE not in result.stdout
    assert not is_listening(first)


def test_cli_run_with_invalid_config_exits_23(tmp_path: Path) -> None:
    port = free_port()
    bad_outbound = {"protocol": "freedom", "settings": {"domainStrategy": "Nope"}}
    config = make_config([http_inbound(port=port)], [bad_outbound])
    result = run_cli("run", "-c", str(_write(tmp_path / "bad.json", config)), cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG_ERROR, result.stdout
    assert "outbounds[0].settings.domainStrategy" in result.stdout
    assert STARTED_LINE not in result.stdout


# -- test / version / uuid / V2Ray aliases ----------------------------------------------------

BAD_CONFIG = {
    "inbounds": [{"protocol": "nope", "port": 1234},
                 {"protocol": "socks", "port": "abc", "settings": {}}],
    "outbounds": [{"protocol": "freedom", "settings": {"domainStrategy": "bogus"}}],
}
BAD_PATHS = ("inbounds[0].protocol", "inbounds[1].port", "outbounds[0].settings.domainStrategy")


def test_cli_test_reports_every_error_and_exits_23(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.json", BAD_CONFIG)
    result = run_cli("test", "-c", str(bad), cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG_ERROR, result.stdout
    for path in BAD_PATHS:
        assert f"{bad}: {path}: " in result.stdout, result.stdout
    assert "Configuration OK." not in result.stdout


def test_cli_test_good_config(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.json", _socks_config(free_port()))
    result = run_cli("test", "-c", str(good), cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().splitlines()[-1] == "Configuration OK."
    assert not is_listening(json.loads(good.read_text())["inbounds"][0]["port"])


def test_v2ray_style_aliases(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.json", _socks_config(free_port()))
    bad = _write(tmp_path / "bad.json", BAD_CONFIG)
    ok = run_cli("-config", str(good), "-test", cwd=tmp_path)
    assert ok.returncode == 0 and "Configuration OK." in ok.stdout, ok.stdout
    failed = run_cli("-test", "-config", str(bad), cwd=tmp_path)
    assert failed.returncode == EXIT_CONFIG_ERROR, failed.stdout
    assert all(path in failed.stdout for path in BAD_PATHS), failed.stdout
    confdir = tmp_path / "conf.d"
    confdir.mkdir()
    _write(confdir / "10-good.json", _socks_config(free_port()))
    from_dir = run_cli("test", "-confdir", str(confdir), cwd=tmp_path)
    assert from_dir.returncode == 0 and "Configuration OK." in from_dir.stdout, from_dir.stdout
    version = run_cli("-version", cwd=tmp_path)
    assert version.returncode == 0 and f"v2sync {v2sync.__version__}" in version.stdout


def test_cli_version(tmp_path: Path) -> None:
    result = run_cli("version", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith(f"v2sync {v2sync.__version__}")
    assert "Python " in result.stdout
    assert "cryptography" in result.stdout  # the crypto backend is named


def test_cli_uuid(tmp_path: Path) -> None:
    first, second = run_cli("uuid", cwd=tmp_path), run_cli("uuid", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0
    assert UUID_RE.match(first.stdout.strip()), first.stdout
    assert UUID_RE.match(second.stdout.strip()), second.stdout
    assert first.stdout != second.stdout


# -- the embedded default ---------------------------------------------------------------------

def _port_free(port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_run_embedded_default_from_another_cwd(tmp_path: Path) -> None:
    """Where 1080/8080 are taken on this machine, the check runs in a network namespace of
    its own (unshare --net) rather than being skipped."""
    busy = [p for p in DEFAULT_PORTS if not _port_free(p, socket.SOCK_STREAM)]
    if not busy and _port_free(1080, socket.SOCK_DGRAM):
        embedded_default_check.check(tmp_path)
        return
    unshare = shutil.which("unshare")
    if unshare is None:
        missing_peer(f"ports {busy or [1080]} are busy and unshare(1) is missing to run around them")
    result = subprocess.run([unshare, "--net", "--", sys.executable, embedded_default_check.__file__,
                             str(tmp_path)], capture_output=True, text=True, timeout=NETNS_TIMEOUT,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0 and "embedded default OK" in result.stdout, result.stdout + result.stderr


# -- access log -------------------------------------------------------------------------------

def test_access_log_line_format(v2sync_process, http_origin: HttpOrigin) -> None:
    socks_port, http_port = free_port(), free_port()
    config = make_config([socks_inbound(port=socks_port), http_inbound(port=http_port)],
                         log={"access": "", "loglevel": "info"})
    process = v2sync_process(config)
    assert curl_ok("--socks5", f"127.0.0.1:{socks_port}", http_origin.url + "/") == b"Home"
    assert curl_ok("-x", f"http://127.0.0.1:{http_port}", http_origin.url + "/") == b"Home"
    # 4.34's forms (tests/scenarios/test_access_log_differential.py compares them live): the
    # SOCKS inbound names its source with the network, the HTTP inbound names the URL.
    origin = rf"127\.0\.0\.1:{http_origin.port}"
    for source, target in ((r"tcp:127\.0\.0\.1:\d+", f"tcp:{origin}"),
                           (r"127\.0\.0\.1:\d+", f"http://{origin}/")):
        process.wait_for_log(r"(?m)^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d "
                             rf"{source} accepted {target} \[direct\]$")


def test_access_log_off_with_none(v2sync_process, http_origin: HttpOrigin) -> None:
    port = free_port()
    process = v2sync_process(_socks_config(port, access="none", loglevel="info"))
    with connect(port) as sock:  # a full request through, so an access line would exist
        sock.sendall(b"\x05\x01\x00")
        assert recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                     + http_origin.port.to_bytes(2, "big"))
        assert recv_exact(sock, 10)[1] == 0
        sock.sendall(get_request("/", f"127.0.0.1:{http_origin.port}", "Connection: close\r\n"))
        assert read_http_response(sock)[0].body == b"Home"
    process.stop()
    assert " accepted tcp:" not in process.log_text()
