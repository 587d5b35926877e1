"""Access log lines as v2ray 4.34 writes them, compared line by line: the same config and
the same traffic through SOCKS (TCP and UDP), HTTP (a proxied GET and a CONNECT) and
dokodemo-door (TCP and UDP), to a tagged and an untagged outbound. Each inbound names the
source and the target as 4.34's code does (``common/log/access.go`` and each server's
``AccessMessage``); only the clock and the clients' ephemeral ports differ.
"""
from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import socks

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
                                                      "network": "udp"})],
            "outbounds": [{"protocol": "freedom"}, {"tag": "tagged", "protocol": "freedom"}],
            "routing": {"rules": [{"type": "field", "inboundTag": ["http-in", "doko-udp"],
                                   "outboundTag": "tagged"}]}}


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

    def curl(*args: str) -> None:
        subprocess.run(["curl", "-s", "-m", "3", "-x", f"http://127.0.0.1:{ports['http-in']}",
                        *args, f"http://127.0.0.1:{echo_port}/"], capture_output=True,
                       timeout=IO_TIMEOUT)

    def doko_tcp() -> None:
        with socket.create_connection(("127.0.0.1", ports["doko-tcp"]), IO_TIMEOUT) as sock:
            sock.sendall(b"z")
            sock.recv(1)

    def doko_udp() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(IO_TIMEOUT)
            sock.sendto(b"w", ("127.0.0.1", ports["doko-udp"]))
            sock.recvfrom(16)
    return [socks_tcp, socks_udp, lambda: curl(), lambda: curl("-p"), doko_tcp, doko_udp]


def access_lines(process_class: Any, tmp_path: Path, echo_port: int, udp_port: int) -> List[str]:
    ports = {tag: free_port() for tag in ("socks-in", "http-in", "doko-tcp", "doko-udp")}
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
    assert len(ours) == 6
