"""Configs and peers for the VLESS and Trojan scenario tests (issue 15).

    SOCKS5 client (this test) -> [client process: socks (udp on) -> vless/trojan out]
                              -> [server process: vless/trojan in -> freedom]
                              -> in-test XOR echo (TCP, UDP) or DNS server

Configs are 4.34's JSON, the same for v2ray and v2sync. ``DnsServer`` is a real UDP DNS
server (dnspython builds its answers) so UDP carries a real protocol, not only echo.
"""
from __future__ import annotations

import socket
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence

import dns.message
import dns.rrset
import socks

from support.certs import Pki

USER_ID = "b831381d-6324-4d53-ad4f-8cda48b30811"
STRANGER_ID = "0f6cbd67-0c4e-4d0b-8e8c-8f7a1e5b9d12"
PASSWORD = "correct horse battery staple"
WS_PATH = "/v2sync-ws"
DNS_NAME = "answer.v2sync.test."
DNS_ANSWER = "192.0.2.53"
JOIN_TIMEOUT = 5.0


def log_section() -> Dict[str, Any]:
    return {"loglevel": "warning", "access": "none"}


def stream(pki: Pki, transport: str, server: bool, alpn: Sequence[str] = ()) -> Dict[str, Any]:
    """streamSettings for ``tcp``, ``tls``, ``wss`` (ws + tls) or ``ws``."""
    out: Dict[str, Any] = {}
    if transport in ("tls", "wss"):
        tls = pki.server_tls() if server else pki.client_tls()
        if alpn:
            tls["alpn"] = list(alpn)
        out.update({"security": "tls", "tlsSettings": tls})
    if transport in ("ws", "wss"):
        out.update({"network": "ws", "wsSettings": {"path": WS_PATH}})
    return out


def server_inbound(protocol: str, port: int, stream_settings: Mapping[str, Any],
                   fallbacks: Optional[List[Dict[str, Any]]] = None,
                   tag: str = "in") -> Dict[str, Any]:
    if protocol == "vless":
        settings: Dict[str, Any] = {"decryption": "none",
                                    "clients": [{"id": USER_ID, "email": "u@test"}]}
    else:
        settings = {"clients": [{"password": PASSWORD, "email": "u@test"}]}
    if fallbacks is not None:
        settings["fallbacks"] = fallbacks
    return {"tag": tag, "protocol": protocol, "listen": "127.0.0.1", "port": port,
            "settings": settings, "streamSettings": dict(stream_settings)}


def client_outbound(protocol: str, port: int, stream_settings: Mapping[str, Any],
                    user_id: str = USER_ID, password: str = PASSWORD) -> Dict[str, Any]:
    if protocol == "vless":
        settings: Dict[str, Any] = {"vnext": [{"address": "127.0.0.1", "port": port, "users": [
            {"id": user_id, "encryption": "none"}]}]}
    else:
        settings = {"servers": [{"address": "127.0.0.1", "port": port, "password": password}]}
    return {"tag": "out", "protocol": protocol, "settings": settings,
            "streamSettings": dict(stream_settings)}


def server_config(inbound: Mapping[str, Any]) -> Dict[str, Any]:
    return {"log": log_section(), "inbounds": [dict(inbound)],
            "outbounds": [{"tag": "direct", "protocol": "freedom", "settings": {}}]}


def client_config(socks_port: int, outbound: Mapping[str, Any]) -> Dict[str, Any]:
    socks_in = {"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1",
                "port": socks_port, "settings": {"auth": "noauth", "udp": True,
                                                 "ip": "127.0.0.1"}}
    return {"log": log_section(), "inbounds": [socks_in], "outbounds": [dict(outbound)]}


def udp_via_socks(socks_port: int, target, payload: bytes, timeout: float) -> bytes:
    """One datagram through SOCKS UDP ASSOCIATE and the first answer (b"" if none)."""
    with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", socks_port)
        sock.settimeout(timeout)
        sock.sendto(payload, target)
        try:
            return bytes(sock.recvfrom(65535)[0])
        except socket.timeout:
            return b""


class DnsServer:
    """Answers A queries for DNS_NAME with DNS_ANSWER, NXDOMAIN otherwise; counts queries."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.address = self.sock.getsockname()
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-server")

    def __enter__(self) -> "DnsServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(JOIN_TIMEOUT)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            query = dns.message.from_wire(data)
            self.queries += 1
            answer = dns.message.make_response(query)
            if str(query.question[0].name) == DNS_NAME:
                answer.answer.append(dns.rrset.from_text(DNS_NAME, 60, "IN", "A", DNS_ANSWER))
            else:
                answer.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(answer.to_wire(), peer)


def dns_query_via_socks(socks_port: int, server, timeout: float) -> List[str]:
    query = dns.message.make_query(DNS_NAME, "A")
    wire = udp_via_socks(socks_port, server, query.to_wire(), timeout)
    assert wire, "no DNS answer came back"
    response = dns.message.from_wire(wire)
    assert response.id == query.id
    return [item.address for rrset in response.answer for item in rrset]
