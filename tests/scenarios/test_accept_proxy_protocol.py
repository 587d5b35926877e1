"""``acceptProxyProtocol`` on tcp and ws inbounds, fed by a real PROXY sender (issue 15
part 4): v2ray 4.34's VLESS fallbacks with ``xver`` 1 and 2.

    v2ray client (sendThrough 127.0.0.5) --vless/ws--> v2ray VLESS :front (not its user:
        fallback by path, xver 2) --> v2sync VLESS-over-ws inbound, acceptProxyProtocol
    curl --interface 127.0.0.5 -x front2 --> v2ray VLESS :front2 (fallback, xver 1)
        --> v2sync HTTP inbound, tcpSettings.acceptProxyProtocol

v2sync routes only source 127.0.0.5 to freedom (everything else to a blackhole), so a
connection gets through only if the address in the header became its source; the access
log must name 127.0.0.5 although every TCP peer v2sync saw was 127.0.0.1.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

from scenarios.helpers_scenarios import curl, curl_ok
from scenarios.keyed_helpers import STRANGER_ID, USER_ID, WS_PATH, client_config, log_section
from scenarios.vmess_helpers import exchange, make_process, open_tunnel
from support.peers import XOR_C, HttpOrigin, TcpEchoServer, free_port, xor_bytes

CLIENT_SOURCE = "127.0.0.5"
LOG_WAIT = 5.0


def _v2sync_config(ws_port: int, http_port: int, access_log: Path) -> dict:
    ws = {"network": "ws", "wsSettings": {"path": WS_PATH, "acceptProxyProtocol": True}}
    return {
        "log": {"loglevel": "warning", "access": str(access_log)},
        "inbounds": [
            {"tag": "ws-in", "protocol": "vless", "listen": "127.0.0.1", "port": ws_port,
             "settings": {"decryption": "none", "clients": [{"id": USER_ID}]},
             "streamSettings": ws},
            {"tag": "http-in", "protocol": "http", "listen": "127.0.0.1", "port": http_port,
             "settings": {}, "streamSettings": {"tcpSettings": {"acceptProxyProtocol": True}}}],
        "outbounds": [{"tag": "block", "protocol": "blackhole",
                       "settings": {"response": {"type": "http"}}},
                      {"tag": "direct", "protocol": "freedom", "settings": {}}],
        "routing": {"rules": [{"type": "field", "source": [CLIENT_SOURCE],
                               "outboundTag": "direct"}]},
    }


def _front_config(front: int, front2: int, ws_port: int, http_port: int) -> dict:
    def vless(port: int, fallback: dict) -> dict:
        return {"protocol": "vless", "listen": "127.0.0.1", "port": port,
                "settings": {"decryption": "none", "clients": [{"id": STRANGER_ID}],
                             "fallbacks": [fallback]}}
    return {"log": log_section(),
            "inbounds": [vless(front, {"path": WS_PATH, "dest": ws_port, "xver": 2}),
                         vless(front2, {"dest": http_port, "xver": 1})],
            "outbounds": [{"protocol": "freedom", "settings": {}}]}


def _client_outbound(front: int, send_through: str) -> dict:
    return {"protocol": "vless", "sendThrough": send_through,
            "settings": {"vnext": [{"address": "127.0.0.1", "port": front,
                                    "users": [{"id": USER_ID, "encryption": "none"}]}]},
            "streamSettings": {"network": "ws", "wsSettings": {"path": WS_PATH}}}


def _wait_for(path: Path, text: str) -> str:
    deadline = time.monotonic() + LOG_WAIT
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    return path.read_text() if path.exists() else ""


def test_proxy_headers_from_v2ray_become_the_source(tmp_path: Path) -> None:
    ws_port, http_port, front, front2 = free_port(), free_port(), free_port(), free_port()
    socks_in, socks_plain = free_port(), free_port()
    access_log = tmp_path / "access.log"
    with TcpEchoServer(xor=XOR_C) as echo, HttpOrigin() as origin, \
            make_process("v2sync", _v2sync_config(ws_port, http_port, access_log)), \
            make_process("v2ray", _front_config(front, front2, ws_port, http_port)), \
            make_process("v2ray",
                         client_config(socks_in, _client_outbound(front, CLIENT_SOURCE))), \
            make_process("v2ray",
                         client_config(socks_plain, _client_outbound(front, "127.0.0.1"))):
        with open_tunnel(socks_in, echo.address) as sock:  # PROXY v2 over ws: routed direct
            assert exchange(sock, b"via ws") == xor_bytes(b"via ws")
        with open_tunnel(socks_plain, echo.address) as sock:  # 127.0.0.1: the blackhole
            sock.sendall(b"blocked")
            assert sock.recv(64).startswith(b"HTTP/1.1 403")
        body = curl_ok("--interface", CLIENT_SOURCE, "-x", f"http://127.0.0.1:{front2}",
                       f"{origin.url}/bytes/5")  # PROXY v1 before an HTTP proxy request
        assert body == bytes(range(5))
        refused = curl("-o", "/dev/null", "-w", "%{http_code}", "-x",
                       f"http://127.0.0.1:{front2}", f"{origin.url}/bytes/5")
        assert refused.stdout == b"403"  # the blackhole's answer: source 127.0.0.1
        no_header = curl("-x", f"http://127.0.0.1:{http_port}", f"{origin.url}/bytes/5")
        assert no_header.returncode != 0  # REQUIRE: no PROXY header, no service
        log = _wait_for(access_log, f"{CLIENT_SOURCE}:")
    # 4.34's access lines name the outbound alone: one from each inbound, both direct.
    assert f"{CLIENT_SOURCE}:" in log and log.count("[direct]") >= 2, log


def _socks_greeting_answer(implementation: str) -> bytes:
    port = free_port()
    config = {"log": {"loglevel": "warning", "access": "none"},
              "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": port,
                            "streamSettings": {"sockopt": {"acceptProxyProtocol": True}}}],
              "outbounds": [{"protocol": "freedom"}]}
    with make_process(implementation, config), \
            socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(b"\x05\x01\x00")  # a SOCKS5 greeting, no PROXY header first
        return sock.recv(16)


def test_sockopt_accept_proxy_protocol_is_ignored_as_in_4_34() -> None:
    """4.34's tcp and ws listeners overwrite ``sockopt.acceptProxyProtocol`` with their own
    settings' value, so there it requires no header (v2sync warns that the key is ignored)."""
    assert _socks_greeting_answer("v2sync") == _socks_greeting_answer("v2ray") == b"\x05\x00"
