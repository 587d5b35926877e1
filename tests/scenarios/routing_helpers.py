"""Helpers for the routing scenario tests (issue 5): routed configs, geo assets, v2ray -test.

Every routed config has the same two outbounds unless a test says otherwise: ``direct``
(freedom, first, so the default) and ``block`` (blackhole answering with 4.34's 403), so a
curl request shows the route it took: 200 from the in-test origin, or the blackhole's 403.
Blocked requests never dial, which is why a blocked name needs no DNS answer and a blocked
IP may be a documentation address nothing listens on.

``V2RayConfigCheck`` runs the real ``v2ray -test`` on a config: every routing config these
tests run in v2sync must also be one 4.34 accepts.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import socks

from scenarios.helpers_scenarios import (BLACKHOLE_403, blackhole, curl_status, freedom,
                                         make_config, read_until_closed, recv_exact,
                                         socks5_tunnel, socks_inbound)
from support.peers import TcpEchoServer, UdpEchoServer

from v2sync.app.router.geodata import ASSET_ENV_NAMES

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
GEOIP_VECTOR = VECTORS / "geoip-test.dat"
GEOSITE_VECTOR = VECTORS / "geosite-test.dat"
V2RAY_TEST_TIMEOUT = 30.0
V2RAY_OK = "Configuration OK"

DIRECT, BLOCK = "direct", "block"
DNS_TAG = "dns-app"  # dns.tag: the inbound tag of the DNS's own queries
FORBIDDEN, OK = 403, 200  # the blackhole's answer, and HttpOrigin's "GET /"
# The origin closes after its answer, so no relay is left waiting out policy's downlinkOnly
# (1 s) for a keep-alive connection when the instance closes.
CLOSE_AFTER_RESPONSE = ("--header", "Connection: close")


# -- config builders --------------------------------------------------------------------------

def direct(tag: str = DIRECT, strategy: str = "UseIPv4") -> Dict[str, Any]:
    """freedom resolving names with the built-in DNS (UseIPv4 keeps dials on 127.0.0.1)."""
    return freedom(tag, domainStrategy=strategy)


def block(tag: str = BLOCK) -> Dict[str, Any]:
    """blackhole with the HTTP response, so a blocked curl request visibly gets the 403."""
    return blackhole(tag, "http")


def rule(outbound: str, **fields: Any) -> Dict[str, Any]:
    return {"type": "field", "outboundTag": outbound, **fields}


def balanced_rule(balancer: str, **fields: Any) -> Dict[str, Any]:
    return {"type": "field", "balancerTag": balancer, **fields}


def routed_config(inbounds: Sequence[Mapping[str, Any]], rules: Sequence[Mapping[str, Any]], *,
                  outbounds: Optional[Sequence[Mapping[str, Any]]] = None,
                  strategy: Optional[str] = None,
                  balancers: Optional[Sequence[Mapping[str, Any]]] = None,
                  dns: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A config with a ``routing`` section (outbounds default to direct, block). With a
    ``dns`` section, the DNS's own queries (routed, as in 4.34) go to the direct outbound
    by a first rule on their inbound tag, DNS_TAG, whatever the rules under test say."""
    config = make_config(inbounds, outbounds or [direct(), block()])
    routing: Dict[str, Any] = {"rules": [dict(r) for r in rules]}
    if dns is not None:
        dns = {"tag": DNS_TAG, **dns}
        routing["rules"].insert(0, {"type": "field", "inboundTag": [DNS_TAG],
                                    "outboundTag": DIRECT})
    if strategy is not None:
        routing["domainStrategy"] = strategy
    if balancers is not None:
        routing["balancers"] = [dict(b) for b in balancers]
    config["routing"] = routing
    if dns is not None:
        config["dns"] = dict(dns)
    return config


def sniffing_socks(tag: str, *protocols: str) -> Dict[str, Any]:
    """A SOCKS inbound that sniffs ``protocols`` (and overrides the target with them)."""
    inbound = socks_inbound(tag)
    inbound["sniffing"] = {"enabled": True, "destOverride": list(protocols)}
    return inbound


def range_around(port: int, avoid: int) -> Tuple[int, int]:
    """A small port range holding ``port`` but not ``avoid``."""
    low, high = port - 3, port + 3
    if low <= avoid <= high:
        low, high = port, port
    return low, high


def dns_server(port: int, host: str = "127.0.0.1", **extra: Any) -> Dict[str, Any]:
    """A ``dns.servers`` object entry (4.34 refuses "ip:port" strings, v2sync too)."""
    return {"address": host, "port": port, **extra}


# -- geo assets -------------------------------------------------------------------------------

def make_asset_dir(path: Path, with_vectors: bool = True) -> Path:
    """``path`` holding the test vectors as ``geoip.dat`` / ``geosite.dat`` (what ``geoip:``
    and ``geosite:`` read) and under their own names (for ``ext:``); empty if not
    ``with_vectors``."""
    path.mkdir(parents=True, exist_ok=True)
    if with_vectors:
        shutil.copy(GEOIP_VECTOR, path / "geoip.dat")
        shutil.copy(GEOSITE_VECTOR, path / "geosite.dat")
        shutil.copy(GEOIP_VECTOR, path / GEOIP_VECTOR.name)
        shutil.copy(GEOSITE_VECTOR, path / GEOSITE_VECTOR.name)
    return path


def point_assets_at(monkeypatch: Any, assets: Path) -> None:
    """Make ``assets`` the only asset directory v2sync sees (its own names win over
    V2RAY_LOCATION_ASSET, so they are cleared)."""
    for name in ASSET_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("V2RAY_LOCATION_ASSET", str(assets))


# -- the real v2ray's config check ------------------------------------------------------------

class V2RayConfigCheck:
    """``check(config, assets)`` asserts ``v2ray -test`` prints "Configuration OK"."""

    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.workdir = workdir
        self.checked: List[str] = []

    def check(self, config: Mapping[str, Any], assets: Optional[Path] = None) -> None:
        path = self.workdir / f"routing-{len(self.checked)}.json"
        text = json.dumps(config, indent=1)
        path.write_text(text)
        env = {k: v for k, v in os.environ.items() if k not in ASSET_ENV_NAMES}
        if assets is not None:
            env["V2RAY_LOCATION_ASSET"] = str(assets)
        result = subprocess.run([self.binary, "-test", "-config", str(path)], cwd=self.workdir,
                                env=env, capture_output=True, text=True,
                                timeout=V2RAY_TEST_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
        assert result.returncode == 0 and V2RAY_OK in result.stdout, (
            f"v2ray -test refused the config (exit {result.returncode}):\n{result.stdout}\n"
            f"{result.stderr}\nconfig: {text}")
        self.checked.append(str(path))


# -- clients ----------------------------------------------------------------------------------

def socks_status(proxy_port: int, url: str, *extra: str) -> int:
    """The status of GET ``url`` through the SOCKS5 inbound; the proxy resolves names."""
    return curl_status("--socks5-hostname", f"127.0.0.1:{proxy_port}", *CLOSE_AFTER_RESPONSE,
                       *extra, url)


def http_proxy_status(proxy_port: int, url: str) -> int:
    """The status of GET ``url`` through the HTTP inbound (a plain proxied request)."""
    return curl_status("--proxy", f"http://127.0.0.1:{proxy_port}", *CLOSE_AFTER_RESPONSE, url)


def tcp_round_trip(proxy_port: int, echo: TcpEchoServer, payload: bytes) -> bytes:
    """What comes back for ``payload`` through a SOCKS tunnel to ``echo``: the echo, or
    everything up to the close when the first byte is not the payload's (the blackhole's
    403; so ``payload`` must not start with its "H")."""
    assert not BLACKHOLE_403.startswith(payload[:1]), "the first byte must tell them apart"
    with socks5_tunnel(proxy_port, "127.0.0.1", echo.port) as sock:
        sock.sendall(payload)
        first = recv_exact(sock, 1)
        if first != payload[:1]:
            return first + read_until_closed(sock)
        return first + recv_exact(sock, len(payload) - 1)


def udp_round_trip(proxy_port: int, echo: UdpEchoServer, payload: bytes, timeout: float) -> bytes:
    """The first datagram back for ``payload`` through SOCKS UDP ASSOCIATE (PySocks), or b""
    if none came within ``timeout`` seconds."""
    with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", proxy_port)
        sock.settimeout(timeout)
        sock.sendto(payload, echo.address)
        try:
            return bytes(sock.recvfrom(4096)[0])
        except socket.timeout:
            return b""


def client_hello(server_name: str) -> bytes:
    """A real TLS ClientHello from Python's ssl module, carrying ``server_name`` as SNI."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()  # the hello is out; the server's answer is awaited
    raise AssertionError("a TLS handshake completed with no server")
