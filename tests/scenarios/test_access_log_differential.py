"""Access log lines as v2ray 4.34 writes them, compared line by line: the same config and
the same traffic through SOCKS (TCP and UDP), HTTP (a proxied GET and a CONNECT) and
dokodemo-door (TCP and UDP), to a tagged and an untagged outbound. Each inbound names the
source and the target as 4.34's code does (``common/log/access.go`` and each server's
``AccessMessage``); only the clock and the clients' ephemeral ports differ.
"""
from __future__ import annotations

import errno
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import socks

from scenarios.routing_helpers import client_hello
from support.certs import Pki, make_pki
from support.peers import TcpEchoServer, UdpEchoServer, free_port
from support.procs import V2RayProcess, V2SyncProcess

IO_TIMEOUT = 5.0
LOG_WAIT = 5.0
_LINE = re.compile(r"^\S+ \S+ (.*)$")
_CLIENT_PORT = re.compile(r"127\.0\.0\.1:\d+ accepted")


def config(ports: Dict[str, int], access: Path, echo_port: int, udp_port: int) -> Dict[str, Any]:
    def inbound(tag: str, protocol: str, settings: Dict[str, Any]) -> Dict[str, Any]:
        return {"tag": tag, "protocol": protocol, "listen": "127.0.0.1", "port": ports[tag],
                "settings": settings}
    return {"log": {"loglevel": "warning", "access": str(access)},
            "inbounds": [
                inbound("socks-in", "socks", {"auth": "noauth", "udp": True, "ip": "127.0.0.1"}),
                inbound("http-in", "http", {}),
                inbound("doko-tcp", "dokodemo-door", {"address": "127.0.0.1", "port": echo_port,
                                                      "network": "tcp"}),
                inbound("doko-udp", "dokodemo-door", {"address": "127.0.0.1", "port": udp_port,
                                                      "network": "udp"}),
                dict(inbound("socks-sniff", "socks", {"auth": "noauth"}), sniffing=SNIFF),
                dict(inbound("http-sniff", "http", {}), sniffing=SNIFF)],
            "outbounds": [{"protocol": "freedom"}, {"tag": "tagged", "protocol": "freedom"},
                          {"tag": "h11", "protocol": "freedom"}],
            "routing": {"rules": [{"type": "field", "inboundTag": ["http-in", "doko-udp"],
                                   "outboundTag": "tagged"},
                                  {"type": "field", "protocol": ["http/1.1"],
                                   "outboundTag": "h11"}]}}


# Sniffing inbounds: a sniffed name is routed on but not logged (4.34's inbounds write the
# access message before the dispatcher sniffs), and the HTTP inbound's proxied requests are
# not sniffed at all (handlePlainHTTP's own session content, protocol "http/1.1").
SNIFF = {"enabled": True, "destOverride": ["http", "tls"]}
INBOUND_TAGS = ("socks-in", "http-in", "doko-tcp", "doko-udp", "socks-sniff", "http-sniff")


def traffic(ports: Dict[str, int], echo_port: int, udp_port: int) -> List[Callable[[], None]]:
    def socks_tcp() -> None:
        with socks.create_connection(("127.0.0.1", echo_port), proxy_type=socks.SOCKS5,
                                     proxy_addr="127.0.0.1", proxy_port=ports["socks-in"],
                                     timeout=IO_TIMEOUT) as sock:
            sock.sendall(b"x")
            sock.recv(1)

    def socks_udp() -> None:
        with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.set_proxy(socks.SOCKS5, "127.0.0.1", ports["socks-in"])
            sock.settimeout(IO_TIMEOUT)
            sock.sendto(b"y", ("127.0.0.1", udp_port))
            sock.recvfrom(16)

    def curl(*args: str, inbound: str = "http-in") -> None:
        subprocess.run(["curl", "-s", "-m", "3", "-x", f"http://127.0.0.1:{ports[inbound]}",
                        *args, f"http://127.0.0.1:{echo_port}/"], capture_output=True,
                       timeout=IO_TIMEOUT)

    def sniffed_tls() -> None:
        with socks.create_connection(("127.0.0.1", echo_port), proxy_type=socks.SOCKS5,
                                     proxy_addr="127.0.0.1", proxy_port=ports["socks-sniff"],
                                     timeout=IO_TIMEOUT) as sock:
            sock.sendall(client_hello("localhost"))
            sock.recv(1)

    def escaped_path() -> None:
        # The path goes into the line as Go's URL.String escapes it (non-ASCII bytes and all).
        with socket.create_connection(("127.0.0.1", ports["http-in"]), IO_TIMEOUT) as sock:
            sock.sendall(b"GET http://127.0.0.1:%d/\xc3\xa9/\"x#y?q=1 HTTP/1.1\r\nHost: x\r\n"
                         b"Connection: close\r\n\r\n" % echo_port)
            sock.recv(1)

    def doko_tcp() -> None:
        with socket.create_connection(("127.0.0.1", ports["doko-tcp"]), IO_TIMEOUT) as sock:
            sock.sendall(b"z")
            sock.recv(1)

    def doko_udp() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(IO_TIMEOUT)
            sock.sendto(b"w", ("127.0.0.1", ports["doko-udp"]))
            sock.recvfrom(16)
    return [socks_tcp, socks_udp, lambda: curl(), lambda: curl("-p"), escaped_path, doko_tcp, doko_udp,
            sniffed_tls, lambda: curl("-H", "Host: localhost", inbound="http-sniff")]


def access_lines(process_class: Any, tmp_path: Path, echo_port: int, udp_port: int) -> List[str]:
    ports = {tag: free_port() for tag in INBOUND_TAGS}
    access = tmp_path / f"{process_class.__name__}.log"
    steps = traffic(ports, echo_port, udp_port)
    with process_class(config(ports, access, echo_port, udp_port)):
        for step in steps:
            step()
        deadline = time.monotonic() + LOG_WAIT
        while len(_read(access)) < len(steps) and time.monotonic() < deadline:
            time.sleep(0.05)
    return _read(access)


def _read(access: Path) -> List[str]:
    text = access.read_text() if access.exists() else ""
    lines = [_LINE.match(line) for line in text.splitlines()]
    return [_CLIENT_PORT.sub("127.0.0.1:<port> accepted", m.group(1)) for m in lines if m]


def test_access_lines_as_4_34_writes_them(v2ray_bin: str, tmp_path: Path) -> None:
    with TcpEchoServer() as echo, UdpEchoServer() as udp_echo:
        ours = access_lines(V2SyncProcess, tmp_path, echo.port, udp_echo.port)
        theirs = access_lines(V2RayProcess, tmp_path, echo.port, udp_echo.port)
    assert ours == theirs
    assert len(ours) == 9
    assert ours[-2:] == [f"tcp:127.0.0.1:<port> accepted tcp:127.0.0.1:{echo.port}",
                         f"127.0.0.1:<port> accepted http://127.0.0.1:{echo.port}/ [h11]"]


# Refused clients get a "rejected" line (source, two spaces, the reason), as 4.34's SOCKS,
# VMess and Shadowsocks servers write one; the reasons are each program's own words.
_REJECTED = re.compile(r"^(\S+) rejected  \S")


def rejecting_config(ports: Dict[str, int], access: Path) -> Dict[str, Any]:
    def inbound(tag: str, protocol: str, settings: Dict[str, Any]) -> Dict[str, Any]:
        return {"tag": tag, "protocol": protocol, "listen": "127.0.0.1", "port": ports[tag],
                "settings": settings}
    return {"log": {"loglevel": "warning", "access": str(access)},
            "inbounds": [
                inbound("socks-pw", "socks", {"auth": "password",
                                              "accounts": [{"user": "u", "pass": "p"}]}),
                inbound("vmess-in", "vmess", {"clients": [
                    {"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}),
                inbound("ss-in", "shadowsocks", {"method": "aes-128-gcm", "password": "pw",
                                                  "network": "tcp,udp"}),
                inbound("vless-in", "vless", {"decryption": "none", "clients": [
                    {"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}),
                inbound("trojan-in", "trojan", {"clients": [{"password": "pw"}]}),
                # Falling back: 4.34's Trojan writes a rejected line first, its VLESS none.
                inbound("trojan-fb", "trojan", {"clients": [{"password": "pw"}],
                                                "fallbacks": [{"dest": ports["closed"]}]}),
                inbound("vless-fb", "vless", {"decryption": "none", "clients": [
                    {"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}],
                    "fallbacks": [{"dest": ports["closed"]}]})],
            "outbounds": [{"protocol": "freedom"}]}
REJECTING_TAGS = ("socks-pw", "vmess-in", "ss-in", "vless-in", "trojan-in")
FALLBACK_TAGS = ("vless-fb", "trojan-fb")


def refused(ports: Dict[str, int]) -> None:
    with socks.create_connection(("127.0.0.1", 9), proxy_type=socks.SOCKS5,
                                 proxy_addr="127.0.0.1", proxy_port=ports["socks-pw"],
                                 proxy_username="u", proxy_password="wrong",
                                 timeout=IO_TIMEOUT):
        pass


def garbage(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as sock:
        sock.sendall(bytes(range(256)) * 4)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(IO_TIMEOUT)
        while sock.recv(4096):
            pass


def silent(port: int) -> None:
    """Connects and closes without a byte: 4.34's VMess, VLESS and Trojan servers skip io.EOF
    and write no line; its SOCKS and Shadowsocks servers write one."""
    socket.create_connection(("127.0.0.1", port), IO_TIMEOUT).close()
    time.sleep(0.2)  # each line in its turn


def _lines_reach(access: Path, count: int) -> None:
    """Wait (up to LOG_WAIT) for ``count`` lines: each connection's line is in the log
    before the next connection starts, so the order says which connection wrote which,
    however late a busy 4.34 runs a goroutine."""
    deadline = time.monotonic() + LOG_WAIT
    while len(_read(access)) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def rejected_sources(process_class: Any, tmp_path: Path) -> List[str]:
    ports = {tag: free_port() for tag in (*REJECTING_TAGS, *FALLBACK_TAGS, "closed")}
    access = tmp_path / f"rejected-{process_class.__name__}.log"
    with process_class(rejecting_config(ports, access)):
        with pytest.raises(socks.ProxyError):
            refused(ports)
        _lines_reach(access, 1)
        garbage(ports["vmess-in"])
        _lines_reach(access, 2)
        garbage(ports["ss-in"])
        _lines_reach(access, 3)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # one per datagram
            sock.sendto(bytes(range(64)), ("127.0.0.1", ports["ss-in"]))
        _lines_reach(access, 4)
        # Lines from the SOCKS and the Shadowsocks inbound only: 5 after the first, 6 after
        # the third.
        for tag, lines in zip(REJECTING_TAGS, (5, 5, 6, 6, 6)):
            silent(ports[tag])
            _lines_reach(access, lines)
        for tag in FALLBACK_TAGS:
            garbage(ports[tag])
        _lines_reach(access, 7)
    lines = access.read_text().splitlines() if access.exists() else []
    found = [_REJECTED.match(m.group(1)) for m in map(_LINE.match, lines) if m]
    return [_SOURCE_PORT.sub(r"\1<port>", m.group(1)) for m in found if m]


_SOURCE_PORT = re.compile(r"(127\.0\.0\.1:)\d+")


def test_rejected_lines_as_4_34_writes_them(v2ray_bin: str, tmp_path: Path) -> None:
    ours = rejected_sources(V2SyncProcess, tmp_path)
    assert ours == rejected_sources(V2RayProcess, tmp_path)
    assert ours == ["tcp:127.0.0.1:<port>", "127.0.0.1:<port>", "127.0.0.1:<port>",
                    "udp:127.0.0.1:<port>", "tcp:127.0.0.1:<port>", "127.0.0.1:<port>",
                    "127.0.0.1:<port>"]


# A transport that fails under the proxy: 4.34 runs TLS and the PROXY header inside the
# proxy's first read, so their failures get the proxy's rejected line (its VMess skips a
# client that sent nothing); WebSocket's upgrade runs in net/http's server, so none.
# Go's TLS reads a record header, fails and closes with the rest unread: a reset, so those
# sends take one; a bad PROXY header ends with a FIN in both (go-proxyproto reads buffered).
# The reset may land during the send, the read, or before the shutdown (ENOTCONN).
_RESET_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN)


def garbage_to_tls(port: int) -> None:
    try:
        garbage(port)
    except OSError as error:
        if error.errno not in _RESET_ERRNOS:
            raise


TRANSPORT_CASES = [("vmess-tls", garbage_to_tls), ("vmess-tls", silent), ("socks-tls", garbage_to_tls),
                   ("socks-tls", silent), ("ss-tls", garbage_to_tls), ("socks-pp", garbage),
                   ("socks-pp", silent), ("vless-ws", garbage), ("vless-tls", garbage_to_tls),
                   ("trojan-tls", garbage_to_tls)]


def transport_config(ports: Dict[str, int], access: Path, pki: Pki) -> Dict[str, Any]:
    tls = {"security": "tls", "tlsSettings": pki.server_tls()}
    uuid = "b831381d-6324-4d53-ad4f-8cda48b30811"

    def inbound(tag: str, protocol: str, settings: Dict[str, Any], stream: Dict[str, Any]
                ) -> Dict[str, Any]:
        return {"tag": tag, "protocol": protocol, "listen": "127.0.0.1", "port": ports[tag],
                "settings": settings, "streamSettings": stream}
    return {"log": {"loglevel": "warning", "access": str(access)},
            "inbounds": [
                inbound("vmess-tls", "vmess", {"clients": [{"id": uuid}]}, tls),
                inbound("socks-tls", "socks", {}, tls),
                inbound("ss-tls", "shadowsocks", {"method": "aes-128-gcm", "password": "pw"}, tls),
                inbound("socks-pp", "socks", {}, {"tcpSettings": {"acceptProxyProtocol": True}}),
                inbound("vless-ws", "vless", {"decryption": "none", "clients": [{"id": uuid}]},
                        {"network": "ws"}),
                inbound("vless-tls", "vless", {"decryption": "none", "clients": [{"id": uuid}]}, tls),
                # trojan/server.go returns a failed first read without an access line
                inbound("trojan-tls", "trojan", {"clients": [{"password": "pw"}]}, tls)],
            "outbounds": [{"protocol": "freedom"}]}


TRANSPORT_LINES = 7  # the rejected lines the cases make, in 4.34 and v2sync alike


def transport_rejections(process_class: Any, tmp_path: Path, pki: Pki) -> List[str]:
    ports = {tag: free_port() for tag, _ in TRANSPORT_CASES}
    access = tmp_path / f"transport-{process_class.__name__}.log"
    with process_class(transport_config(ports, access, pki)):
        for tag, send in TRANSPORT_CASES:
            send(ports[tag])
            time.sleep(0.1)  # each line in its turn
        deadline = time.monotonic() + LOG_WAIT
        while len(_read(access)) < TRANSPORT_LINES and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # and no more than those come
    lines = access.read_text().splitlines() if access.exists() else []
    found = [_REJECTED.match(m.group(1)) for m in map(_LINE.match, lines) if m]
    return [_SOURCE_PORT.sub(r"\1<port>", m.group(1)) for m in found if m]


def test_transport_failures_get_rejected_lines_as_in_4_34(v2ray_bin: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    ours = transport_rejections(V2SyncProcess, tmp_path, pki)
    assert ours == transport_rejections(V2RayProcess, tmp_path, pki)
    assert ours == ["127.0.0.1:<port>", "tcp:127.0.0.1:<port>", "tcp:127.0.0.1:<port>",
                    "127.0.0.1:<port>", "tcp:127.0.0.1:<port>", "tcp:127.0.0.1:<port>",
                    "127.0.0.1:<port>"]
