"""Configs and clients for the API scenarios: one config shape that v2sync and v2ray 4.34
both run (stats, policy switches, a dokodemo-door API inbound routed to the api tag), the
real ``v2ctl api`` as a client, and grpcio for HandlerService."""
from __future__ import annotations

import re
import subprocess
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from support.peers import free_port, pattern_bytes
from vmess_helpers import open_tunnel, recv_exactly

V2CTL_TIMEOUT = 20.0
SETTLE_TIMEOUT = 10.0
SETTLE_POLL = 0.2
EMAIL = "alice@example.test"
STAT = re.compile(r'stat: <\s*name: "([^"]*)"(?:\s*value: (-?\d+))?\s*>')


def api_config(api_port: int, inbounds: Sequence[Mapping[str, Any]],
               services: Sequence[str] = ("HandlerService", "LoggerService", "StatsService"),
               log: Optional[Mapping[str, Any]] = None, **extra: Any) -> Dict[str, Any]:
    """4.34's API setup around ``inbounds``; every stats switch on; freedom out."""
    api_in = {"tag": "api-in", "protocol": "dokodemo-door", "listen": "127.0.0.1",
              "port": api_port, "settings": {"address": "127.0.0.1"}}
    config = {
        "log": dict(log or {"loglevel": "warning", "access": "none"}),
        "stats": {},
        "api": {"tag": "api", "services": list(services)},
        "policy": {"levels": {"0": {"statsUserUplink": True, "statsUserDownlink": True}},
                   "system": {"statsInboundUplink": True, "statsInboundDownlink": True,
                              "statsOutboundUplink": True, "statsOutboundDownlink": True}},
        "inbounds": [api_in, *[dict(i) for i in inbounds]],
        "outbounds": [{"tag": "direct", "protocol": "freedom", "settings": {}}],
        "routing": {"rules": [{"type": "field", "inboundTag": ["api-in"],
                               "outboundTag": "api"}]},
    }
    config.update(extra)
    return config


def socks_in(port: int, tag: str = "socks-in") -> Dict[str, Any]:
    return {"tag": tag, "protocol": "socks", "listen": "127.0.0.1", "port": port,
            "settings": {"auth": "noauth"}}


def v2ctl(api_port: int, method: str, request: str = "") -> "subprocess.CompletedProcess[str]":
    return subprocess.run(["v2ctl", "api", f"--server=127.0.0.1:{api_port}", method, request],
                          capture_output=True, text=True, timeout=V2CTL_TIMEOUT)


def parse_stats(text: str) -> Dict[str, int]:
    """v2ctl's text format: a field at zero is left out."""
    return {name: int(value or 0) for name, value in STAT.findall(text)}


def query(api_port: int, pattern: str = "") -> Dict[str, int]:
    result = v2ctl(api_port, "StatsService.QueryStats", f'pattern: "{pattern}" reset: false')
    assert result.returncode == 0, result.stdout + result.stderr
    return parse_stats(result.stdout)


def settled(api_port: int, pattern: str, ready: Callable[[Dict[str, int]], bool],
            stable: Callable[[Dict[str, int]], Dict[str, int]] = lambda s: s
            ) -> Dict[str, int]:
    """Query until the counters pass ``ready`` and ``stable(counters)`` holds still over one
    poll (relays finish after the client's last byte), within SETTLE_TIMEOUT. The API
    inbound's own counters move with every query: ``stable`` leaves them out."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last: Dict[str, int] = {}
    while True:
        now = query(api_port, pattern)
        if ready(now) and stable(now) == stable(last):
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"counters did not settle: {now}")
        last = now
        time.sleep(SETTLE_POLL)


def socks_echo(socks_port: int, echo_address: Any, size: int) -> None:
    """One SOCKS5 CONNECT (3 + 10 bytes up, 2 + 10 down) and ``size`` bytes echoed."""
    payload = pattern_bytes(size)
    with open_tunnel(socks_port, echo_address) as sock:
        sock.sendall(payload)
        assert recv_exactly(sock, size) == payload


def ports(n: int) -> List[int]:
    found: List[int] = []
    while len(found) < n:
        port = free_port()
        if port not in found:
            found.append(port)
    return found
