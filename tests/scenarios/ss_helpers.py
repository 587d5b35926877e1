"""Shared helpers for the Shadowsocks scenario tests (issue 16): configs and process pairs.

    client process:  SOCKS5 (udp on) -> shadowsocks outbound --+
    server process:  shadowsocks inbound (tcp,udp) -> freedom <-+ -> in-test origin

Configs are plain dicts in V2Ray 4.34's JSON shape, the same for v2ray and v2sync. ``SsChains``
starts a pair of real processes per key on first use and stops them all at the end.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List

import pytest

from scenarios.vmess_helpers import Chain, make_process
from support.peers import free_port

PASSWORD = "v2sync shadowsocks test"
METHODS = ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305", "none")
LOG = {"loglevel": "warning", "access": "none"}


def ss_server_config(port: int, method: str, password: str = PASSWORD,
                     network: str = "tcp,udp") -> Dict[str, Any]:
    inbound = {"tag": "ss-in", "protocol": "shadowsocks", "listen": "127.0.0.1", "port": port,
               "settings": {"method": method, "password": password, "network": network}}
    return {"log": LOG, "inbounds": [inbound],
            "outbounds": [{"tag": "direct", "protocol": "freedom", "settings": {}}]}


def ss_client_config(socks_port: int, ss_port: int, method: str,
                     password: str = PASSWORD) -> Dict[str, Any]:
    socks_in = {"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1", "port": socks_port,
                "settings": {"auth": "noauth", "udp": True, "ip": "127.0.0.1"}}
    server = {"address": "127.0.0.1", "port": ss_port, "method": method, "password": password}
    return {"log": LOG, "inbounds": [socks_in],
            "outbounds": [{"tag": "ss-out", "protocol": "shadowsocks",
                           "settings": {"servers": [server]}}]}


@dataclass(frozen=True)
class SsKey:
    client: str   # "v2sync" or "v2ray": the process with the SOCKS inbound
    server: str   # the process with the shadowsocks inbound
    method: str

    @property
    def id(self) -> str:
        return f"{self.client}-to-{self.server}-{self.method}"


def start_ss_chain(key: SsKey) -> Chain:
    ss_port, socks_port = free_port(), free_port()
    server = make_process(key.server, ss_server_config(ss_port, key.method)).start()
    try:
        client = make_process(key.client, ss_client_config(socks_port, ss_port,
                                                           key.method)).start()
    except BaseException:
        server.stop(check=False)
        raise
    return Chain(key, server, client, socks_port)  # type: ignore[arg-type]


class SsChains:
    """Running chains by key, started on first use; a bad exit on stop fails the module."""

    def __init__(self) -> None:
        self._chains: Dict[SsKey, Chain] = {}
        self.errors: List[str] = []

    def live(self, key: SsKey) -> Chain:
        chain = self._chains.get(key)
        if chain is not None and chain.dead():
            self._stop(self._chains.pop(key))
            chain = None
        if chain is None:
            chain = self._chains[key] = start_ss_chain(key)
        assert not chain.dead(), f"{chain.dead()}\n{chain.logs()}"
        return chain

    def _stop(self, chain: Chain) -> None:
        for process in (chain.client, chain.server):
            try:
                process.stop()
            except AssertionError as error:
                self.errors.append(f"{chain.key.id}: {error}")

    def close(self) -> None:
        """Every chain at once: a process takes up to a second to stop, and there are 20."""
        chains = list(self._chains.values())
        self._chains.clear()
        with ThreadPoolExecutor(max(1, len(chains)), thread_name_prefix="ss-stop") as pool:
            list(pool.map(self._stop, chains))


@contextlib.contextmanager
def running_chains() -> Iterator[SsChains]:
    chains = SsChains()
    try:
        yield chains
    finally:
        chains.close()
    if chains.errors:
        pytest.fail("\n\n".join(chains.errors), pytrace=False)
