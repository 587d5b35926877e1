"""A client that negotiates HTTP/2 with a WebSocket server over TLS (curl --http2, a
browser, a prober): 4.34's net/http answers each request over HTTP/2 (404 for another
path, gorilla's 400 for the path, since nothing upgrades in HTTP/2), and so does v2sync;
v2sync closed the connection (found by a TLS review)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, Dict, List

from support.certs import make_pki
from support.peers import free_port
from support.procs import V2RayProcess, V2SyncProcess

CURL_TIMEOUT = 20
_DATE = re.compile(rb"\r\ndate: [^\r]*\r\n")


def config(port: int, tls: Dict[str, Any]) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"protocol": "vless", "listen": "127.0.0.1", "port": port,
                          "settings": {"decryption": "none", "clients": [
                              {"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]},
                          "streamSettings": {"network": "ws", "wsSettings": {"path": "/ws"},
                                             "security": "tls", "tlsSettings": tls}}],
            "outbounds": [{"protocol": "freedom"}]}


def answers(process_class: Any, tls: Dict[str, Any]) -> List[bytes]:
    """curl's view of each request over HTTP/2: status line, headers, body (date blanked);
    the three GETs go over one connection."""
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    with process_class(config(port, tls)):
        one_connection = subprocess.run(
            ["curl", "-sk", "--http2", "-i", f"{base}/ws", "--next", "-sk", "--http2", "-i",
             f"{base}/nope", "--next", "-sk", "--http2", "-i", f"{base}/ws?ed=2048"],
            capture_output=True, timeout=CURL_TIMEOUT, check=True)
        head = subprocess.run(["curl", "-sk", "--http2", "-I", f"{base}/ws"],
                              capture_output=True, timeout=CURL_TIMEOUT, check=True)
    return [_DATE.sub(b"\r\ndate: <now>\r\n", out) for out in (one_connection.stdout, head.stdout)]


def test_http2_requests_are_refused_over_http2_as_in_4_34(v2ray_bin: str, tmp_path: Path) -> None:
    tls = make_pki(tmp_path / "pki").server_tls()
    ours = answers(V2SyncProcess, tls)
    assert ours == answers(V2RayProcess, tls)
    assert ours[0].count(b"HTTP/2 400") == 2 and b"HTTP/2 404" in ours[0]
