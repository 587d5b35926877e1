"""A config without outbounds: accepted with a warning, as ``v2ray -test`` accepts it, and
each connection is closed, as 4.34's dispatcher does when it finds no default handler
(``app/dispatcher/default.go`` routedDispatch: close the downlink, interrupt the uplink).

The SOCKS reply goes out before dispatch in both, so a client sees success and then EOF.
The real v2ray runs the same config for comparison.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
from scenarios.helpers_scenarios import (CMD_CONNECT, REPLY_SUCCEEDED, connect, port_of,
                                         read_until_closed, run_cli, running_instance,
                                         socks5_greet, socks5_request, socks_inbound, wait_idle)
from support.peers import TcpEchoServer, free_port

CONNECTIONS = 3


def no_outbound_config(port: int = 0) -> Dict[str, Any]:
    return {"inbounds": [socks_inbound(port=port)]}


def socks_connect(proxy_port: int, target_port: int) -> Tuple[bytes, bytes]:
    """The CONNECT reply, then everything read until the proxy closes."""
    with connect(proxy_port) as sock:
        socks5_greet(sock)
        reply = socks5_request(sock, CMD_CONNECT, "127.0.0.1", target_port)
        return reply, read_until_closed(sock)


def test_v2sync_test_says_ok_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "no-outbound.json"
    path.write_text(json.dumps(no_outbound_config(1080)))
    result = run_cli("test", "-c", str(path), cwd=tmp_path)
    assert (result.returncode, result.stdout.splitlines()) == (0, [
        "WARNING no outbound configured: every connection will be closed",
        "Configuration OK."])


def test_socks_connect_is_closed_and_nothing_crashes(tcp_echo: TcpEchoServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), running_instance(no_outbound_config()) as instance:
        port = port_of(instance, "socks-in")
        for _ in range(CONNECTIONS):
            reply, after = socks_connect(port, tcp_echo.port)
            assert (reply[1], after) == (REPLY_SUCCEEDED, b"")
        wait_idle(instance)
    assert tcp_echo.accepted == 0
    assert caplog.text.count("default outbound handler not exist") == CONNECTIONS
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_v2ray_closes_the_same_way(v2ray_process, tcp_echo: TcpEchoServer) -> None:
    port = free_port()
    v2ray_process(no_outbound_config(port))
    reply, after = socks_connect(port, tcp_echo.port)
    assert (reply[1], after) == (REPLY_SUCCEEDED, b"")
    assert tcp_echo.accepted == 0
