"""SIGHUP (``systemctl reload``) re-reads the config without dropping live connections.

A connection made before the reload keeps relaying under the config it started with; new
connections get the new config (a port it adds listens, a port both share keeps serving);
a config that does not load leaves the running one as it was; SIGTERM after a reload still
exits 0 with the retired instance's connection still open.
"""
from __future__ import annotations

import json
import os
import signal
import socket
from typing import Any, Dict, Optional

import socks
from support.peers import TcpEchoServer, free_port
from support.procs import ConfigProcess, accepts_tcp

IO_TIMEOUT = 10.0


def _config(socks_port: int, http_port: Optional[int] = None) -> Dict[str, Any]:
    inbounds = [{"tag": "socks-in", "listen": "127.0.0.1", "port": socks_port,
                 "protocol": "socks", "settings": {"auth": "noauth", "udp": True}}]
    if http_port is not None:
        inbounds.append({"tag": "http-in", "listen": "127.0.0.1", "port": http_port,
                         "protocol": "http", "settings": {}})
    return {"log": {"loglevel": "info"}, "inbounds": inbounds,
            "outbounds": [{"tag": "direct", "protocol": "freedom", "settings": {}}]}


def _tunnel(port: int, echo: TcpEchoServer) -> socket.socket:
    sock = socks.socksocket()
    sock.settimeout(IO_TIMEOUT)
    sock.set_proxy(socks.SOCKS5, "127.0.0.1", port)
    sock.connect(echo.address)
    return sock


def _round_trip(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed"
        received += chunk
    assert received == payload


def _reload(process: ConfigProcess, config: Dict[str, Any]) -> None:
    process.config_path.write_text(json.dumps(config))
    os.kill(process.pid, signal.SIGHUP)


def test_reload_keeps_live_connections_and_applies_the_new_config(v2sync_process) -> None:
    socks_port, http_port = free_port(), free_port()
    with TcpEchoServer() as echo:
        process = v2sync_process(_config(socks_port))
        held = _tunnel(socks_port, echo)
        try:
            _round_trip(held, b"before the reload")
            assert not accepts_tcp(("127.0.0.1", http_port))
            _reload(process, _config(socks_port, http_port))
            process.wait_for_log("reloaded; connections made before go on")
            _round_trip(held, b"after the reload, same connection" * 1000)
            assert accepts_tcp(("127.0.0.1", http_port))  # the port the new config added
            with _tunnel(socks_port, echo) as fresh:  # the shared port, now the new instance
                _round_trip(fresh, b"a new connection")
            _reload(process, {"inbounds": [{"protocol": "socks", "port": "not a port"}]})
            process.wait_for_log("reload refused, still serving the previous config")
            _round_trip(held, b"after a refused reload")
            assert accepts_tcp(("127.0.0.1", http_port))
        finally:
            held.close()
    assert process.stop() == 0


def test_sigterm_after_a_reload_with_a_retired_connection_open(v2sync_process) -> None:
    socks_port = free_port()
    with TcpEchoServer() as echo:
        process = v2sync_process(_config(socks_port))
        with _tunnel(socks_port, echo) as held:
            _round_trip(held, b"x")
            _reload(process, _config(socks_port))
            process.wait_for_log("reloaded;")
            _round_trip(held, b"y")
            assert process.stop() == 0  # the teardown's check: exit 0, not killed
