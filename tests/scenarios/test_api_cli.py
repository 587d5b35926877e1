"""``v2sync api`` against v2sync and against v2ray 4.34: it prints what ``v2ctl api``
prints for the same call, and its adduser/rmuser (which v2ctl lacks) are understood by
4.34's HandlerService as by v2sync's: a user it adds connects, one it removed is gone."""
from __future__ import annotations

import subprocess
import sys

import pytest

from api_helpers import api_config, ports, socks_echo, socks_in, v2ctl
from helpers_scenarios import cli_env
from support.peers import TcpEchoServer
from support.procs import V2RayProcess, V2SyncProcess
from test_api_handler import NEW_ID, echo_works
from vmess_helpers import client_config, vmess_client_entry, vmess_inbound

CLI_TIMEOUT = 30.0


def v2sync_api(api_port: int, *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "v2sync", "api", "--server",
                           f"127.0.0.1:{api_port}", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, env=cli_env())


def blocks(text: str) -> list:
    return sorted(block.strip() for block in text.split("stat: <") if block.strip())


@pytest.mark.parametrize("implementation", ["v2sync", "v2ray"])
def test_v2sync_api_speaks_as_v2ctl(implementation: str, v2ray_bin: str,
                                    tcp_echo: TcpEchoServer) -> None:
    api_port, socks_port, vmess_port, carol_port = ports(4)
    config = api_config(api_port, [
        socks_in(socks_port),
        vmess_inbound([vmess_client_entry(email="bob@example.test")], port=vmess_port)])
    config["policy"]["levels"]["0"]["handshake"] = 2
    carol = client_config(carol_port, vmess_port, "aes-128-gcm", 0)
    carol["outbounds"][0]["settings"]["vnext"][0]["users"][0]["id"] = NEW_ID
    server_class = V2SyncProcess if implementation == "v2sync" else V2RayProcess
    with server_class(config), V2RayProcess(carol):
        socks_echo(socks_port, tcp_echo.address, 5000)
        ours = v2sync_api(api_port, "statsquery", "--pattern", "socks-in")
        theirs = v2ctl(api_port, "StatsService.QueryStats", 'pattern: "socks-in"')
        assert ours.returncode == theirs.returncode == 0 and "socks-in" in ours.stdout
        # The same text, stat by stat (4.34 answers in Go's map order, which varies).
        assert blocks(ours.stdout) == blocks(theirs.stdout)
        name = "inbound>>>socks-in>>>traffic>>>uplink"
        ours = v2sync_api(api_port, "stats", name, "--reset")
        theirs = v2ctl(api_port, "StatsService.GetStats", f'name: "{name}"')
        assert "value: 5013" in ours.stdout and "value" not in theirs.stdout  # reset to 0
        sys_fields = {line.split(":")[0] for line in
                      v2sync_api(api_port, "sysstats").stdout.splitlines()}
        assert {"NumGoroutine", "Sys", "Alloc"} <= sys_fields
        restart = v2sync_api(api_port, "restartlogger")
        assert (restart.returncode, restart.stdout) == (0, "")  # v2ctl prints nothing either

        add = ("adduser", "--inbound", "vmess-in", "--email", "carol@example.test",
               "--uuid", NEW_ID)
        assert v2sync_api(api_port, *add).returncode == 0
        assert echo_works(carol_port, tcp_echo)
        again = v2sync_api(api_port, *add)
        assert again.returncode == 255 and "already exists" in again.stderr
        remove = ("rmuser", "--inbound", "vmess-in", "--email", "carol@example.test")
        assert v2sync_api(api_port, *remove).returncode == 0  # the next call proves it gone
        again = v2sync_api(api_port, *remove)
        assert again.returncode == 255 and "not found" in again.stderr


def test_v2sync_api_errors_without_a_server() -> None:
    api_port, = ports(1)
    result = v2sync_api(api_port, "sysstats")
    assert result.returncode == 255
    # errors go to stderr, as v2ctl writes them (they went to stdout; found by a review)
    assert result.stderr.startswith("v2sync api: ") and "Traceback" not in result.stderr
    assert not result.stdout
    bad = subprocess.run([sys.executable, "-m", "v2sync", "api", "--server", "nonsense",
                          "sysstats"], capture_output=True, text=True, timeout=CLI_TIMEOUT,
                         env=cli_env())
    assert bad.returncode == 255 and "host:port" in bad.stderr and not bad.stdout


@pytest.mark.parametrize("value", ["nan", "inf", "1e308", "0", "-5"])
def test_bad_seconds_are_refused_by_argparse(value: str) -> None:
    """They reached the socket and the selector as tracebacks (found by a review)."""
    for command in (["api", "--timeout", value, "sysstats"],
                    ["top", "--interval", value, "--iterations", "1"]):
        done = subprocess.run([sys.executable, "-m", "v2sync", *command], capture_output=True,
                              text=True, timeout=CLI_TIMEOUT, env=cli_env())
        assert done.returncode == 2 and "expected seconds above 0" in done.stderr
        assert "Traceback" not in done.stderr


def test_a_server_that_takes_no_connection_costs_the_timeout_only() -> None:
    """A listener whose accept queue is full drops the SYNs, as a firewalled host does: the
    dial counts against ``--timeout``, as v2ctl's 3 s covers its dial (it waited 16 s;
    found by a review)."""
    import socket
    import time

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            time.sleep(0.2)
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "v2sync", "api", "--server",
                                   f"127.0.0.1:{port}", "--timeout", "1", "sysstats"],
                                  capture_output=True, text=True, timeout=CLI_TIMEOUT,
                                  env=cli_env())
            elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    assert done.returncode == 255 and "Traceback" not in done.stderr
    assert elapsed < 8  # the dial's own 16 s before


def test_a_server_that_breaks_http2_is_one_error_line() -> None:
    """SETTINGS, then DATA on stream 0 (hand-made frames): h2's ProtocolError escaped as a
    traceback (found by a review)."""
    import socket

    from support.peers import answer_and_close

    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    data_on_stream_0 = b"\x00\x00\x03\x00\x00\x00\x00\x00\x00abc"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(CLI_TIMEOUT)
        thread = answer_and_close(listener, 1, settings + data_on_stream_0, CLI_TIMEOUT)
        done = subprocess.run([sys.executable, "-m", "v2sync", "api", "--server",
                               "127.0.0.1:%d" % listener.getsockname()[1], "sysstats"],
                              capture_output=True, text=True, timeout=CLI_TIMEOUT, env=cli_env())
        thread.join(CLI_TIMEOUT)
    assert done.returncode == 255 and "HTTP/2 protocol error" in done.stderr
    assert "Traceback" not in done.stderr
