"""``proxySettings``: one outbound's connections carried by another, against 4.34.

The server is always the real v2ray: a SOCKS inbound and a VMess inbound (over TLS or not),
then freedom to an in-test echo. The client, v2sync or v2ray with the same config, has a
SOCKS inbound, a VMess outbound ``main`` whose ``proxySettings`` names ``via``, and ``via``:
a SOCKS outbound to the server's SOCKS inbound. So each connection reaches the VMess
inbound through the server's own SOCKS inbound, whose access line shows it, with the
target ``main`` asked for (its server address, a name left unresolved).
"""
from __future__ import annotations

import contextlib
import socket
import os
import time
from typing import Any, Dict, Iterator, List

import pytest
from scenarios.vmess_helpers import USER_ID, echo_datagrams, exchange, make_process, open_tunnel
from support.certs import Pki
from support.peers import XOR_C, TcpEchoServer, UdpEchoServer, free_port, xor_bytes
from support.procs import ConfigProcess

EXCHANGES = 3
LOG_WAIT = 5.0  # 4.34 writes its log from a goroutine
STOP_BOUND = 4.0  # v2sync's shutdown: a 2 s grace for live connections, then aborts
SERVER_NAME = "localhost"  # the VMess server's address in the client: a name, not an IP


def server_config(socks_port: int, vmess_port: int, pki: Pki, tls: bool) -> Dict[str, Any]:
    vmess: Dict[str, Any] = {
        "tag": "s-vmess", "protocol": "vmess", "listen": "127.0.0.1", "port": vmess_port,
        "settings": {"clients": [{"id": USER_ID, "alterId": 0}]}}
    if tls:
        vmess["streamSettings"] = {"security": "tls", "tlsSettings": pki.server_tls()}
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"tag": "s-socks", "protocol": "socks", "listen": "127.0.0.1",
                          "port": socks_port, "settings": {"auth": "noauth"}}, vmess],
            "outbounds": [{"protocol": "freedom"}]}


def client_config(entry_port: int, socks_port: int, vmess_port: int, pki: Pki, tls: bool,
                  via: str = "via") -> Dict[str, Any]:
    main: Dict[str, Any] = {
        "tag": "main", "protocol": "vmess", "proxySettings": {"tag": via},
        "settings": {"vnext": [{"address": SERVER_NAME, "port": vmess_port,
                                "users": [{"id": USER_ID, "alterId": 0}]}]}}
    if tls:
        main["streamSettings"] = {"security": "tls", "tlsSettings": pki.client_tls("localhost")}
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": entry_port,
                          "settings": {"auth": "noauth"}}],
            "outbounds": [main, {"tag": "via", "protocol": "socks", "settings": {
                "servers": [{"address": "127.0.0.1", "port": socks_port}]}}]}


@contextlib.contextmanager
def chain(client: str, pki: Pki, tls: bool, via: str = "via") -> Iterator[Dict[str, Any]]:
    socks_port, vmess_port, entry_port = free_port(), free_port(), free_port()
    processes: List[ConfigProcess] = []
    try:
        processes.append(make_process("v2ray", server_config(socks_port, vmess_port, pki,
                                                             tls)).start())
        processes.append(make_process(client, client_config(entry_port, socks_port,
                                                            vmess_port, pki, tls, via)).start())
        yield {"server": processes[0], "client": processes[1], "entry": entry_port,
               "vmess": vmess_port}
    finally:
        for process in reversed(processes):
            process.stop()


def wait_for_lines(process: ConfigProcess, text: str, count: int) -> int:
    deadline = time.monotonic() + LOG_WAIT
    while process.log_text().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return process.log_text().count(text)


def exchanges(entry: int, echo: TcpEchoServer) -> None:
    for i in range(EXCHANGES):
        payload = b"chained %d" % i
        with open_tunnel(entry, echo.address) as sock:
            assert exchange(sock, payload) == xor_bytes(payload)


@pytest.fixture
def echo() -> Iterator[TcpEchoServer]:
    with TcpEchoServer(xor=XOR_C) as server:
        yield server


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("client", ["v2sync", "v2ray"])
def test_the_outbound_is_carried_by_the_tagged_one_as_in_4_34(client: str, tls: bool,
                                                               pki: Pki,
                                                               echo: TcpEchoServer) -> None:
    """Every connection of ``main`` enters the server through its SOCKS inbound, asking for
    ``localhost:<vmess port>`` as written (the name is not resolved on the client); TLS
    from ``main``'s streamSettings runs on top, as 4.34's handler applies it."""
    with chain(client, pki, tls) as running:
        exchanges(running["entry"], echo)
        through_socks = f"accepted tcp:{SERVER_NAME}:{running['vmess']}"
        seen = wait_for_lines(running["server"], through_socks, EXCHANGES)
        assert seen == EXCHANGES, running["server"].log_text()
        assert "failed" not in running["client"].log_text().lower()


@pytest.mark.parametrize("client", ["v2sync", "v2ray"])
def test_a_tag_no_outbound_has_is_a_warning_and_a_direct_dial_as_in_4_34(
        client: str, pki: Pki, echo: TcpEchoServer) -> None:
    with chain(client, pki, False, via="nobody") as running:
        exchanges(running["entry"], echo)
        warning = "failed to get outbound handler with tag: nobody"
        assert wait_for_lines(running["client"], warning, EXCHANGES) == EXCHANGES, \
            running["client"].log_text()
        assert f"accepted tcp:{SERVER_NAME}" not in running["server"].log_text()


SS_METHOD = "aes-128-gcm"
SS_PASSWORD = "chained"


def udp_configs(entry_port: int, socks_port: int, ss_port: int) -> List[Dict[str, Any]]:
    """[server, client]: the client's Shadowsocks outbound ``main`` is carried by ``via``,
    a SOCKS outbound to the server's SOCKS inbound, UDP included."""
    server = {"log": {"loglevel": "warning"},
              "inbounds": [{"tag": "s-socks", "protocol": "socks", "listen": "127.0.0.1",
                            "port": socks_port,
                            "settings": {"auth": "noauth", "udp": True, "ip": "127.0.0.1"}},
                           {"tag": "s-ss", "protocol": "shadowsocks", "listen": "127.0.0.1",
                            "port": ss_port,
                            "settings": {"method": SS_METHOD, "password": SS_PASSWORD,
                                         "network": "tcp,udp"}}],
              "outbounds": [{"protocol": "freedom"}]}
    client = {"log": {"loglevel": "warning"},
              "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": entry_port,
                            "settings": {"auth": "noauth", "udp": True, "ip": "127.0.0.1"}}],
              "outbounds": [
                  {"tag": "main", "protocol": "shadowsocks", "proxySettings": {"tag": "via"},
                   "settings": {"servers": [{"address": "127.0.0.1", "port": ss_port,
                                             "method": SS_METHOD, "password": SS_PASSWORD}]}},
                  {"tag": "via", "protocol": "socks", "settings": {
                      "servers": [{"address": "127.0.0.1", "port": socks_port}]}}]}
    return [server, client]


class _Entry:
    """What ``echo_datagrams`` asks of a chain: the SOCKS port and logs for a failure."""

    def __init__(self, port: int, processes: List[ConfigProcess]):
        self.socks_port = port
        self.processes = processes

    def logs(self) -> str:
        return "\n".join(p.log_tail() for p in self.processes)


@pytest.mark.parametrize("client", ["v2sync", "v2ray"])
def test_datagrams_of_the_outbound_are_carried_too_as_in_4_34(client: str) -> None:
    """Shadowsocks' UDP goes through the carrier as 4.34 dials it (the same Dial): the
    server's SOCKS inbound relays it to the Shadowsocks inbound's UDP port."""
    entry_port, socks_port, ss_port = free_port(), free_port(), free_port()
    server_cfg, client_cfg = udp_configs(entry_port, socks_port, ss_port)
    processes: List[ConfigProcess] = []
    try:
        processes.append(make_process("v2ray", server_cfg).start())
        processes.append(make_process(client, client_cfg).start())
        with UdpEchoServer(xor=XOR_C) as udp_echo:
            echo_datagrams(_Entry(entry_port, processes), udp_echo,
                           [os.urandom(100 + i) for i in range(EXCHANGES)])
        through_socks = f"accepted udp:127.0.0.1:{ss_port}"
        assert wait_for_lines(processes[0], through_socks, 1) >= 1, processes[0].log_text()
    finally:
        for process in reversed(processes):
            process.stop()


def test_a_carried_connection_open_at_sigterm_ends_with_the_process(pki: Pki,
                                                                    echo: TcpEchoServer) -> None:
    """The carrier's link is not the dispatcher's; it ends when the carried outbound lets
    go, so a stop still exits 0 within its bound, and logs no thread left running."""
    with chain("v2sync", pki, False) as running:
        with open_tunnel(running["entry"], echo.address) as sock:
            assert exchange(sock, b"held") == xor_bytes(b"held")
            started = time.monotonic()
            assert running["client"].stop() == 0  # the check: exit 0 on SIGTERM, not killed
            assert time.monotonic() - started < STOP_BOUND
        assert "still running" not in running["client"].log_text()


LINGER = 10  # uplinkOnly and downlinkOnly: what an end of stream would leave a relay to
ENDS_WITHIN = 6.0  # the carrier's five refused dials take ~1 s


@pytest.mark.parametrize("client", ["v2sync", "v2ray"])
def test_a_carrier_that_cannot_dial_ends_the_connection_at_once_as_in_4_34(
        client: str, echo: TcpEchoServer) -> None:
    """The failure reaches the carried outbound as an error (4.34's pipe connection), so its
    relay ends then, not ``uplinkOnly`` later."""
    entry_port, refused_port = free_port(), free_port()
    config = {"log": {"loglevel": "warning"},
              "policy": {"levels": {"0": {"uplinkOnly": LINGER, "downlinkOnly": LINGER}}},
              "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": entry_port,
                            "settings": {"auth": "noauth"}}],
              "outbounds": [{"tag": "a", "protocol": "freedom", "proxySettings": {"tag": "b"}},
                            {"tag": "b", "protocol": "socks", "settings": {"servers": [
                                {"address": "127.0.0.1", "port": refused_port}]}}]}
    process = make_process(client, config).start()
    try:
        with open_tunnel(entry_port, echo.address) as sock:
            sock.sendall(b"hello")
            sock.settimeout(ENDS_WITHIN)
            try:
                assert sock.recv(16) == b""
            except ConnectionResetError:
                pass  # an end all the same
    finally:
        process.stop()
    assert echo.accepted == 0


CHAIN_NAME = "chain.test"  # only the client's built-in DNS knows it (its "hosts")
# Not 127.0.0.1, which 4.34's hosts also answer as ::1 (hosts.go), one of which its
# freedom then draws at random.
CHAIN_IP = "127.0.0.2"


def use_ip_configs(entry_port: int, socks_port: int) -> List[Dict[str, Any]]:
    """[server, client]: the client's freedom ``a`` (UseIP) is carried by ``b``, a SOCKS
    outbound to the server's SOCKS inbound (UDP too); the server cannot resolve the name."""
    socks = {"auth": "noauth", "udp": True, "ip": "127.0.0.1"}
    server = {"log": {"loglevel": "warning"},
              "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": socks_port,
                            "settings": socks}],
              "outbounds": [{"protocol": "freedom"}]}
    client = {"log": {"loglevel": "warning"}, "dns": {"hosts": {CHAIN_NAME: CHAIN_IP}},
              "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": entry_port,
                            "settings": socks}],
              "outbounds": [{"tag": "a", "protocol": "freedom", "proxySettings": {"tag": "b"},
                             "settings": {"domainStrategy": "UseIP"}},
                            {"tag": "b", "protocol": "socks", "settings": {"servers": [
                                {"address": "127.0.0.1", "port": socks_port}]}}]}
    return [server, client]


def udp_round_trip(entry_port: int, target: Any, payload: bytes) -> bytes:
    import socks  # PySocks: a SOCKS5 UDP association, the target sent as a name
    with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", entry_port)
        sock.settimeout(LOG_WAIT)
        sock.sendto(payload, target)
        return sock.recvfrom(4096)[0]


@pytest.mark.parametrize("client", ["v2sync", "v2ray"])
def test_a_use_ip_freedom_resolves_before_its_chain_as_in_4_34(client: str) -> None:
    """freedom.go resolves the name under UseIP, then dials the answer through its handler:
    the carrier is asked for the IP, for TCP and UDP alike."""
    entry_port, socks_port = free_port(), free_port()
    server_cfg, client_cfg = use_ip_configs(entry_port, socks_port)
    processes: List[ConfigProcess] = []
    try:
        processes.append(make_process("v2ray", server_cfg).start())
        processes.append(make_process(client, client_cfg).start())
        with TcpEchoServer(xor=XOR_C, host=CHAIN_IP) as echo, \
                open_tunnel(entry_port, (CHAIN_NAME, echo.port)) as sock:
            assert exchange(sock, b"resolved") == xor_bytes(b"resolved")
        with UdpEchoServer(xor=XOR_C, host=CHAIN_IP) as udp_echo:
            reply = udp_round_trip(entry_port, (CHAIN_NAME, udp_echo.port), b"datagram")
            assert reply == xor_bytes(b"datagram")
            lines = [f"accepted tcp:{CHAIN_IP}:{echo.port}",
                     f"accepted udp:{CHAIN_IP}:{udp_echo.port}"]
            for line in lines:
                assert wait_for_lines(processes[0], line, 1) == 1, processes[0].log_text()
        assert CHAIN_NAME not in processes[0].log_text()
    finally:
        for process in reversed(processes):
            process.stop()
