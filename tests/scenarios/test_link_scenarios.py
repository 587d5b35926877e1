"""``v2sync run LINK`` end to end (issue 20): the real v2ray 4.34 as the server, the link
the way a provider would hand it out, v2sync as the one-command client, and curl through
its local HTTP and SOCKS5 ports to an in-test HTTP origin.

    curl -> [v2sync run LINK: http/socks in -> PROTOCOL out] -> [v2ray: PROTOCOL in ->
    freedom] -> in-test origin

The link for each server is written by ``v2sync link export --host`` from the server's own
config, so export, import and the run are checked together against a server that is not
v2sync. TLS servers use the test CA, which the client trusts through ``SSL_CERT_FILE`` (as a
user with a private CA would).
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence

import pytest
import socks
from support.certs import SERVER_NAME, Pki
from support.peers import (XOR_C, HttpOrigin, UdpEchoServer, free_port, pattern_bytes,
                           xor_bytes)
from support.procs import REPO_ROOT, ConfigProcess, V2RayProcess

from v2sync.infra.share.client import client_config
from v2sync.infra.share.links import format_link, parse_link

UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"
BODY_BYTES = 200_000
CURL_TIMEOUT = 20
DATAGRAMS = 5
UDP_TIMEOUT = 5.0


def _server(protocol: str, port: int, pki: Pki, network: str = "tcp") -> Dict[str, Any]:
    settings: Dict[str, Any] = {
        "vmess": {"clients": [{"id": UUID, "alterId": 0, "email": "vmess@user"}]},
        "vless": {"clients": [{"id": UUID, "email": "vless@user"}], "decryption": "none"},
        "trojan": {"clients": [{"password": "trojan pass/ word", "email": "trojan@user"}]},
        "shadowsocks": {"method": "aes-128-gcm", "password": "ss pass", "network": "tcp,udp"},
    }[protocol]
    stream: Dict[str, Any] = {"network": network}
    if protocol in ("vless", "trojan") or network == "ws":
        stream.update(security="tls", tlsSettings=pki.server_tls())
    if network == "ws":
        stream["wsSettings"] = {"path": "/ray path"}
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"tag": f"{protocol}-in", "listen": "127.0.0.1", "port": port,
                          "protocol": protocol, "settings": settings,
                          "streamSettings": stream}],
            "outbounds": [{"protocol": "freedom"}]}


def _export(server: Mapping[str, Any], tmp_path: Path, host: str) -> str:
    path = tmp_path / "server.json"
    path.write_text(json.dumps(server))
    result = subprocess.run([sys.executable, "-m", "v2sync", "link", "export", "-c", str(path),
                             "--host", host], capture_output=True, text=True, timeout=30,
                            cwd=str(REPO_ROOT))
    assert result.returncode == 0, result.stdout + result.stderr
    links = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
    assert len(links) == 1, result.stdout
    return links[0]


class LinkClient(ConfigProcess):
    """``python -m v2sync run LINK... --socks-port S --http-port H``: no config file. The
    config dict (what ``link import`` prints) only tells the harness which ports to probe."""

    name = "v2sync-links"
    from support.procs import V2SYNC_READY as ready_pattern  # noqa: N811

    def __init__(self, args: Sequence[str], links: Sequence[str], socks: int, http: int,
                 env: Mapping[str, str]):
        parsed = [parse_link(a) for a in links]
        super().__init__(client_config(parsed, socks, http), env=env, expect_exit_code=0)
        self.args = [*args, "--socks-port", str(socks), "--http-port", str(http)]
        self.socks, self.http = socks, http

    def command(self, config_path: Path) -> List[str]:
        return [sys.executable, "-m", "v2sync", "run", *self.args]

    def environment(self) -> Dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        return env


@pytest.fixture(scope="module")
def origin() -> Iterator[HttpOrigin]:
    with HttpOrigin() as server:
        yield server


def _curl(proxy_args: Sequence[str], url: str) -> bytes:
    result = subprocess.run(["curl", "-sS", "--fail", "--max-time", str(CURL_TIMEOUT),
                             *proxy_args, url], capture_output=True, timeout=CURL_TIMEOUT + 5)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def _check_both_ports(client: LinkClient, origin: HttpOrigin) -> None:
    _check_ports(client.socks, client.http, origin)


def _check_udp(socks_port: int) -> None:
    """SOCKS5 UDP ASSOCIATE through the link's server to a UDP echo (UDP is on)."""
    with UdpEchoServer(xor=XOR_C) as echo:
        with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.set_proxy(socks.SOCKS5, "127.0.0.1", socks_port)
            sock.settimeout(UDP_TIMEOUT)
            for i in range(DATAGRAMS):
                payload = os.urandom(1 + i * 300)
                sock.sendto(payload, echo.address)
                data, source = sock.recvfrom(4096)
                assert (data, source) == (xor_bytes(payload), echo.address), f"datagram {i}"


def _check_ports(socks: int, http: int, origin: HttpOrigin) -> None:
    url = f"{origin.url}/bytes/{BODY_BYTES}"
    expected = pattern_bytes(BODY_BYTES)
    assert _curl(["-x", f"http://127.0.0.1:{http}"], url) == expected
    assert _curl(["--socks5-hostname", f"127.0.0.1:{socks}"], url) == expected


def _run(args: Sequence[str], pki: Pki) -> LinkClient:
    return LinkClient(args, args, free_port(), free_port(),
                      env={"SSL_CERT_FILE": str(pki.ca_file)})


CASES = [pytest.param(p, n, id=f"{p}-{n}")
         for p, n in [("vmess", "tcp"), ("vmess", "ws"), ("vless", "tcp"), ("trojan", "tcp"),
                      ("shadowsocks", "tcp")]]


@pytest.mark.parametrize("protocol, network", CASES)
def test_run_link_to_real_v2ray(protocol: str, network: str, pki: Pki, v2ray_bin: str,
                                origin: HttpOrigin, tmp_path: Path) -> None:
    server_port = free_port()
    server = _server(protocol, server_port, pki, network)
    tls = server["inbounds"][0]["streamSettings"].get("security") == "tls"
    link = _export(server, tmp_path, SERVER_NAME if tls else "127.0.0.1")
    if tls:  # the test server's name resolves nowhere: dial loopback, verify the name
        link = _dial_loopback(link)
    with V2RayProcess(server, binary=v2ray_bin):
        with _run([link], pki) as client:
            _check_both_ports(client, origin)
            _check_udp(client.socks)


def _dial_loopback(link: str) -> str:
    parsed = parse_link(link)
    return format_link(replace(parsed, address="127.0.0.1", sni=parsed.sni or SERVER_NAME))


def test_two_links_balance_and_both_servers_serve(pki: Pki, v2ray_bin: str,
                                                  origin: HttpOrigin, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    servers = [_server("vmess", port, pki) for port in ports]
    links = [_export(s, tmp_path, "127.0.0.1") for s in servers]
    with V2RayProcess(servers[0], binary=v2ray_bin) as first, \
            V2RayProcess(servers[1], binary=v2ray_bin) as second:
        with _run(links, pki) as client:
            for _ in range(12):  # a random pick each: 12 tries miss a server 1 in 2,048
                _check_both_ports(client, origin)
    for server in (first, second):  # 4.34's access log names each connection it served
        assert "accepted tcp:127.0.0.1" in server.log_text(), server.log_text()


def test_subscription_file(pki: Pki, v2ray_bin: str, origin: HttpOrigin,
                           tmp_path: Path) -> None:
    port = free_port()
    server = _server("vmess", port, pki)
    link = _export(server, tmp_path, "127.0.0.1")
    subscription = tmp_path / "sub.txt"
    subscription.write_bytes(base64.b64encode(f"# my provider\n{link}\n".encode()))
    with V2RayProcess(server, binary=v2ray_bin):
        with LinkClient(["--subscription", str(subscription)], [link], free_port(), free_port(),
                        env={}) as client:
            _check_both_ports(client, origin)


def _import(link: str, socks: int, http: int) -> Dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "v2sync", "link", "import", link,
                             "--socks-port", str(socks), "--http-port", str(http)],
                            capture_output=True, text=True, timeout=30, cwd=str(REPO_ROOT))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("protocol, network", [pytest.param(*c.values, id=c.id) for c in CASES])
def test_imported_config_runs_in_real_v2ray_too(protocol: str, network: str, pki: Pki,
                                                v2ray_bin: str, origin: HttpOrigin,
                                                tmp_path: Path) -> None:
    """The control for the cases above, and the proof that ``link import`` prints a config
    4.34 runs (not only accepts): v2ray itself as the client, for every protocol."""
    server = _server(protocol, free_port(), pki, network)
    tls = server["inbounds"][0]["streamSettings"].get("security") == "tls"
    link = _export(server, tmp_path, SERVER_NAME if tls else "127.0.0.1")
    if tls:
        link = _dial_loopback(link)
    socks, http = free_port(), free_port()
    client_json = _import(link, socks, http)
    env = {"SSL_CERT_FILE": str(pki.ca_file)}
    with V2RayProcess(server, binary=v2ray_bin):
        with V2RayProcess(client_json, binary=v2ray_bin, env=env) as client:
            assert client.returncode is None
            _check_ports(socks, http, origin)
            _check_udp(socks)


TWO_ACCEPTED = r"(?s)accepted.*accepted"  # one line for each port's connection


def test_reload_rereads_the_subscription(pki: Pki, v2ray_bin: str, origin: HttpOrigin,
                                         tmp_path: Path) -> None:
    """SIGHUP re-reads ``--subscription FILE``: new connections go to the new server."""
    servers = [_server("vmess", free_port(), pki) for _ in range(2)]
    links = [_export(s, tmp_path, "127.0.0.1") for s in servers]
    subscription = tmp_path / "sub.txt"
    subscription.write_text(links[0] + "\n")
    with V2RayProcess(servers[0], binary=v2ray_bin) as first, \
            V2RayProcess(servers[1], binary=v2ray_bin) as second:
        with LinkClient(["--subscription", str(subscription)], [links[0]], free_port(),
                        free_port(), env={}) as client:
            _check_both_ports(client, origin)
            first.wait_for_log(TWO_ACCEPTED)  # 4.34 writes its log from a goroutine
            served_by_first = first.log_text().count("accepted")
            subscription.write_bytes(base64.b64encode(links[1].encode()))
            os.kill(client.pid, signal.SIGHUP)
            client.wait_for_log("reloaded;")
            _check_both_ports(client, origin)
            second.wait_for_log(TWO_ACCEPTED)
            assert second.log_text().count("accepted") == 2, second.log_text()
            assert first.log_text().count("accepted") == served_by_first
