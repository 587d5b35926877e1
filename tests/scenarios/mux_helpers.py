"""Mux.cool chains of real processes for the interop tests, the bad-input tests and the
benchmark: the VMess chain of ``vmess_helpers`` with ``mux`` on the client's outbound and
the server's access log on (its lines show which connection each sub-connection came on).

    SOCKS5 client -> [client: socks -> vmess out, mux on] -> [server: vmess in -> freedom]
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

from scenarios.vmess_helpers import client_config, make_process, server_config
from support.peers import free_port
from support.procs import ConfigProcess

# v2sync writes "127.0.0.1:5000 accepted tcp:...", v2ray "tcp:127.0.0.1:5000 accepted tcp:...".
LOG_WAIT = 5.0  # log lines reach the file a little after the traffic
ACCESS_LINE = re.compile(r"(?:tcp:|udp:)?(\S+:\d+) accepted (tcp|udp):\S+:(\d+)")


@dataclass
class MuxChain:
    client: ConfigProcess
    server: ConfigProcess
    socks_port: int

    def stop(self) -> None:
        for process in (self.client, self.server):
            process.stop(check=process.name == "v2sync")

    def logs(self) -> str:
        return "\n".join(f"--- {role} ({p.name}) ---\n{p.log_tail(3000)}"
                         for role, p in (("client", self.client), ("server", self.server)))

    def sources_for(self, port: int) -> List[str]:
        """The server side's source address of each access line to ``port``."""
        return [m.group(1) for m in ACCESS_LINE.finditer(self.server.log_text())
                if int(m.group(3)) == port]

    def wait_sources(self, port: int, expected: int, timeout: float = LOG_WAIT) -> List[str]:
        """``sources_for``, once at least ``expected`` lines are there (bounded wait)."""
        deadline = time.monotonic() + timeout
        sources = self.sources_for(port)
        while len(sources) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
            sources = self.sources_for(port)
        assert len(sources) >= expected, self.logs()
        return sources


def mux_client_config(socks_port: int, vmess_port: int, concurrency: int = 8,
                      stream: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    config = client_config(socks_port, vmess_port, "aes-128-gcm", 0, stream)
    config["outbounds"][0]["mux"] = {"enabled": True, "concurrency": concurrency}
    return config


def access_logged_server_config(vmess_port: int, stream: Optional[Mapping[str, Any]] = None,
                                policy: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    config = server_config(vmess_port, 0, stream)
    config["log"] = {"loglevel": "warning"}  # a log section without "access": access lines on
    if policy:
        config["policy"] = dict(policy)
    return config


def start_mux_chain(client: str, server: str, concurrency: int = 8,
                    streams: Optional[tuple] = None,
                    policy: Optional[Mapping[str, Any]] = None,
                    server_config_hook: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]]
                    = None) -> MuxChain:
    """``server_config_hook`` may change the server's config (routing, more outbounds)."""
    vmess_port, socks_port = free_port(), free_port()
    server_stream, client_stream = streams or ({}, {})
    server_config_ = access_logged_server_config(vmess_port, server_stream, policy)
    if server_config_hook is not None:
        server_config_ = server_config_hook(server_config_)
    server_process = make_process(server, server_config_).start()
    try:
        client_config_ = mux_client_config(socks_port, vmess_port, concurrency, client_stream)
        if policy:
            client_config_["policy"] = dict(policy)
        client_process = make_process(client, client_config_).start()
    except BaseException:
        server_process.stop(check=False)
        raise
    return MuxChain(client_process, server_process, socks_port)
