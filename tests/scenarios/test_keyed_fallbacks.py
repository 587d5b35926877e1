"""Fallbacks to a real web server (issue 15 parts 3, 5, 6): Debian's nginx, started here.

One VLESS+TLS port serves nginx's site to curl (chosen by path and by ALPN, with PROXY v1
and v2 headers checked by what nginx logs) while a v2ray VLESS client proxies through the
same port. The same config runs on v2ray 4.34 as the server and both must answer curl
alike. Trojan falls back on plain TCP; a unix socket and a TLS server name select too.
"""
from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from scenarios.helpers_scenarios import curl, curl_ok
from scenarios.keyed_helpers import (client_config, client_outbound, server_config,
                                     server_inbound, stream)
from scenarios.vmess_helpers import exchange, make_process, open_tunnel
from support.certs import SERVER_NAME, Pki
from support.nginx import Nginx
from support.peers import XOR_C, TcpEchoServer, answer_and_close, free_port, xor_bytes

PP_LINE = re.compile(r'pp=127\.0\.0\.1:(\d+) remote=127\.0\.0\.1 "GET (\S+) ')


@pytest.fixture(scope="module")
def nginx(tmp_path_factory) -> Iterator[Dict[str, object]]:
    sock_dir = tmp_path_factory.mktemp("nginx-sock")
    ports = {"site": free_port(), "pp": free_port(), "h2": free_port()}
    unix_path = str(Path(sock_dir) / "site.sock")
    servers = {"site": f"127.0.0.1:{ports['site']}",
               "pp": f"127.0.0.1:{ports['pp']} proxy_protocol",
               "h2": f"127.0.0.1:{ports['h2']} http2",
               "unix": f"unix:{unix_path}"}
    with Nginx(servers) as server:
        yield {"server": server, "unix": unix_path, **ports}


def _fallbacks(nginx) -> List[Dict[str, object]]:
    return [{"dest": nginx["site"]},
            {"path": "/pp1", "dest": f"127.0.0.1:{nginx['pp']}", "xver": 1},
            {"path": "/pp2", "dest": nginx["pp"], "xver": 2},
            {"path": "/unix", "dest": nginx["unix"]},
            {"alpn": "h2", "dest": nginx["h2"]}]


def _https(port: int, path: str, *extra: str) -> str:
    url = f"https://{SERVER_NAME}:{port}{path}"
    return curl_ok("--cacert", str(PKI_CA[0]), "--resolve", f"{SERVER_NAME}:{port}:127.0.0.1",
                   *extra, url).decode()


PKI_CA: List[Path] = []
PROMPT_CLOSE = 0.7  # seconds: well under uplinkOnly's 1 s


def _site_answers(port: int) -> Dict[str, str]:
    return {"/": _https(port, "/", "--http1.1"),
            "/deep/page": _https(port, "/deep/page", "--http1.1"),
            "/pp1": _https(port, "/pp1", "--http1.1"),
            "/pp2": _https(port, "/pp2", "--http1.1"),
            "/unix": _https(port, "/unix", "--http1.1"),
            "h2 /": _https(port, "/", "--http2"),
            "h2 /pp1": _https(port, "/pp1", "--http2")}


@pytest.mark.parametrize("implementation", ["v2sync", "v2ray"])
def test_vless_tls_port_serves_nginx_and_a_v2ray_client(pki: Pki, nginx, implementation) -> None:
    PKI_CA[:] = [pki.ca_file]
    port, socks_port = free_port(), free_port()
    tls = stream(pki, "tls", server=True, alpn=["h2", "http/1.1"])
    inbound = server_inbound("vless", port, tls, fallbacks=_fallbacks(nginx))
    outbound = client_outbound("vless", port, stream(pki, "tls", server=False))
    server: Nginx = nginx["server"]  # type: ignore[assignment]
    before = len(server.access_lines())
    with TcpEchoServer(xor=XOR_C) as echo, make_process(implementation, server_config(inbound)), \
            make_process("v2ray", client_config(socks_port, outbound)):
        answers = _site_answers(port)
        with open_tunnel(socks_port, echo.address) as sock:  # the same port, a VLESS user
            assert exchange(sock, b"vless through the site's port") == \
                xor_bytes(b"vless through the site's port")
    assert answers == {"/": "site / HTTP/1.1\n", "/deep/page": "site /deep/page HTTP/1.1\n",
                       "/pp1": "pp /pp1 HTTP/1.1\n", "/pp2": "pp /pp2 HTTP/1.1\n",
                       "/unix": "unix /unix HTTP/1.1\n", "h2 /": "h2 / HTTP/2.0\n",
                       # under h2 no request line is visible: the h2 default serves it
                       "h2 /pp1": "h2 /pp1 HTTP/2.0\n"}
    logged = [PP_LINE.search(line) for line in server.access_lines()[before:]]
    proxied = sorted(m.group(2) for m in logged if m)
    assert proxied == ["/pp1", "/pp2"]  # nginx read a PROXY header on both, with a port
    assert all(int(m.group(1)) > 0 for m in logged if m)


def test_trojan_falls_back_on_plain_tcp(nginx) -> None:
    port = free_port()
    inbound = server_inbound("trojan", port, {}, fallbacks=_fallbacks(nginx))
    with make_process("v2sync", server_config(inbound)):
        assert curl_ok(f"http://127.0.0.1:{port}/hello").decode() == "site /hello HTTP/1.1\n"
        assert curl_ok(f"http://127.0.0.1:{port}/pp2").decode() == "pp /pp2 HTTP/1.1\n"
        # h2c's preface ("PRI * HTTP/2.0") has no path to read: the "" entry, nginx's
        # HTTP/1 site, gets it (and refuses it, as logged).
        server: Nginx = nginx["server"]  # type: ignore[assignment]
        curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/x")
    assert f'{nginx["site"]} pp=-:- remote=127.0.0.1 "PRI * HTTP/2.0"' in server.access_lines()


def test_server_name_selects_before_alpn(pki: Pki, nginx) -> None:
    """``name`` (Xray's key; 4.34 ignores it) picks by the TLS server name."""
    PKI_CA[:] = [pki.ca_file]
    port = free_port()
    tls = stream(pki, "tls", server=True, alpn=["h2", "http/1.1"])
    fallbacks = [{"dest": nginx["site"]}, {"name": "localhost", "dest": nginx["unix"]}]
    inbound = server_inbound("vless", port, tls, fallbacks=fallbacks)
    with make_process("v2sync", server_config(inbound)):
        assert _https(port, "/a", "--http1.1") == "site /a HTTP/1.1\n"
        by_name = curl_ok("--cacert", str(pki.ca_file), "--http1.1",
                          f"https://localhost:{port}/b").decode()
        assert by_name == "unix /b HTTP/1.1\n"


def test_unmatched_fallback_closes_without_an_answer(pki: Pki, nginx) -> None:
    """Only an h2 entry and no default: 4.34 logs 'failed to find the default "alpn"
    config' and closes; curl over http/1.1 gets no response from either implementation."""
    PKI_CA[:] = [pki.ca_file]
    results = []
    for implementation in ("v2sync", "v2ray"):
        port = free_port()
        tls = stream(pki, "tls", server=True, alpn=["h2", "http/1.1"])
        inbound = server_inbound("vless", port, tls,
                                 fallbacks=[{"alpn": "h2", "dest": nginx["h2"]}])
        with make_process(implementation, server_config(inbound)):
            result = curl("--cacert", str(pki.ca_file), "--resolve",
                          f"{SERVER_NAME}:{port}:127.0.0.1", "--http1.1",
                          f"https://{SERVER_NAME}:{port}/")
            h2 = _https(port, "/z", "--http2")
        results.append((result.returncode != 0, result.stdout, h2))
    assert results[0] == results[1] == (True, b"", "h2 /z HTTP/2.0\n")


def test_a_tls_client_is_closed_when_its_fallback_ends_as_in_4_34(pki: Pki) -> None:
    """A fallback that answers and closes (a close-delimited HTTP/1.0 page): 4.34 then
    closes the TLS client at once (its response copy's Close reaches the *tls.Conn), where
    v2sync waited for uplinkOnly (1 s): such a page took a second longer to finish."""
    finished = {}
    with socket.create_server(("127.0.0.1", 0)) as site:
        site.settimeout(10)
        answer_and_close(site, 2, CLOSE_DELIMITED)
        for implementation in ("v2sync", "v2ray"):
            port = free_port()
            tls = stream(pki, "tls", server=True, alpn=["h2", "http/1.1"])
            inbound = server_inbound("trojan", port, tls,
                                     fallbacks=[{"dest": site.getsockname()[1]}])
            with make_process(implementation, server_config(inbound)):
                finished[implementation] = _fetch_until_closed(pki, port)
    assert finished == {"v2sync": (CLOSE_DELIMITED, True), "v2ray": (CLOSE_DELIMITED, True)}


CLOSE_DELIMITED = b"HTTP/1.0 200 OK\r\n\r\nno length: the close ends it"


def _fetch_until_closed(pki: Pki, port: int) -> tuple:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    with socket.create_connection(("127.0.0.1", port), 10) as raw, \
            context.wrap_socket(raw, server_hostname=SERVER_NAME) as sock:
        sock.sendall(b"GET /c HTTP/1.0\r\n\r\n")
        started, answer = time.monotonic(), b""
        for _ in range(64):
            try:
                data = sock.recv(4096)
            except (ssl.SSLError, OSError):
                break
            if not data:
                break
            answer += data
        return answer, time.monotonic() - started < PROMPT_CLOSE


def test_alpn_selects_with_traffic_counters_on(pki: Pki, nginx) -> None:
    """With the inbound's counters on, the proxy reads through a counting layer; the
    fallback still sees TLS's ALPN under it (v2sync did not: h2 clients got the default)."""
    PKI_CA[:] = [pki.ca_file]
    port = free_port()
    tls = stream(pki, "tls", server=True, alpn=["h2", "http/1.1"])
    inbound = dict(server_inbound("vless", port, tls, fallbacks=_fallbacks(nginx)), tag="in")
    config = dict(server_config(inbound), stats={}, policy={"system": {
        "statsInboundUplink": True, "statsInboundDownlink": True}})
    with make_process("v2sync", config):
        assert _https(port, "/", "--http2") == "h2 / HTTP/2.0\n"
        assert _https(port, "/", "--http1.1") == "site / HTTP/1.1\n"
