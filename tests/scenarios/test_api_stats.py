"""The stats API with the real client: ``v2ctl api`` against v2sync and against v2ray 4.34
on the same config and the same traffic; the counters are compared with each other and
with the bytes the test sent."""
from __future__ import annotations

import re
import shutil
from typing import Dict, Tuple

import pytest

from api_helpers import (EMAIL, api_config, parse_stats, ports, query, settled, socks_echo,
                         socks_in, v2ctl)
from support.peers import TcpEchoServer
from support.procs import V2RayProcess, V2SyncProcess
from vmess_helpers import client_config, recv_exactly, vmess_client_entry, vmess_inbound

SOCKS_BYTES = 100_000
VMESS_BYTES = 200_000
# PySocks-free SOCKS5 by hand (vmess_helpers.open_tunnel): greeting 3 + IPv4 request 10 up,
# method reply 2 + reply 10 down.
SOCKS_UP = 3 + 10 + SOCKS_BYTES
SOCKS_DOWN = 2 + 10 + SOCKS_BYTES
UP_NAME = "inbound>>>socks-in>>>traffic>>>uplink"


def _exact(stats: Dict[str, int]) -> Dict[str, int]:
    """The counters whose values both implementations must agree on: payload and SOCKS
    bytes. The VMess inbound's (encrypted chunks, cut where each sender's reads fell) and
    the API inbound's (each side's own HTTP/2 frames) are compared by name only."""
    return {k: v for k, v in stats.items() if "vmess-in" not in k and "api-in" not in k}


def _run(process_class, v2ray_bin: str, echo: TcpEchoServer) -> Tuple[Dict[str, int], list]:
    api_port, socks_port, vmess_port, client_port = ports(4)
    config = api_config(api_port, [
        socks_in(socks_port),
        vmess_inbound([vmess_client_entry(email=EMAIL)], port=vmess_port)])
    with process_class(config), \
            V2RayProcess(client_config(client_port, vmess_port, "aes-128-gcm", 0)):
        socks_echo(socks_port, echo.address, SOCKS_BYTES)
        socks_echo(client_port, echo.address, VMESS_BYTES)
        stats = settled(api_port, "", lambda s: s.get(
            f"user>>>{EMAIL}>>>traffic>>>downlink", 0) >= VMESS_BYTES
            and s.get("inbound>>>socks-in>>>traffic>>>downlink", 0) >= SOCKS_DOWN,
            stable=_exact)
        outputs = [v2ctl(api_port, "StatsService.GetStats", f'name: "{UP_NAME}" reset: true'),
                   v2ctl(api_port, "StatsService.GetStats", f'name: "{UP_NAME}"'),
                   v2ctl(api_port, "StatsService.GetStats", 'name: "no>>>such"'),
                   v2ctl(api_port, "StatsService.GetSysStats", "")]
    return stats, outputs


def test_counters_and_v2ctl_against_4_34(v2ray_bin: str, tcp_echo: TcpEchoServer) -> None:
    ours, our_calls = _run(V2SyncProcess, v2ray_bin, tcp_echo)
    theirs, their_calls = _run(V2RayProcess, v2ray_bin, tcp_echo)
    assert sorted(ours) == sorted(theirs)
    assert _exact(ours) == _exact(theirs)
    # ... and both equal what the test sent.
    assert _exact(ours) == {
        UP_NAME: SOCKS_UP, "inbound>>>socks-in>>>traffic>>>downlink": SOCKS_DOWN,
        "outbound>>>direct>>>traffic>>>uplink": SOCKS_BYTES + VMESS_BYTES,
        "outbound>>>direct>>>traffic>>>downlink": SOCKS_BYTES + VMESS_BYTES,
        f"user>>>{EMAIL}>>>traffic>>>uplink": VMESS_BYTES,
        f"user>>>{EMAIL}>>>traffic>>>downlink": VMESS_BYTES}
    assert ours["inbound>>>vmess-in>>>traffic>>>uplink"] > VMESS_BYTES  # headers, chunk tags
    # GetStats with reset answers the value before it; the next read is 0 (left out).
    for ours_call, theirs_call in zip(our_calls[:2], their_calls[:2]):
        assert (ours_call.returncode, ours_call.stdout) == (theirs_call.returncode,
                                                            theirs_call.stdout)
    assert parse_stats(our_calls[0].stdout) == {UP_NAME: SOCKS_UP}
    assert parse_stats(our_calls[1].stdout) == {UP_NAME: 0}
    # An unknown name: the same error text, exit 255.
    assert our_calls[2].returncode == their_calls[2].returncode == 255
    message = "v2ray.com/core/app/stats/command: no>>>such not found."
    assert message in their_calls[2].stderr + their_calls[2].stdout
    assert message in our_calls[2].stderr + our_calls[2].stdout
    _check_sys_stats(our_calls[3].stdout, their_calls[3].stdout)


def _check_sys_stats(ours: str, theirs: str) -> None:
    fields = dict(re.findall(r"^(\w+): (\d+)$", ours, re.M))
    their_fields = dict(re.findall(r"^(\w+): (\d+)$", theirs, re.M))
    # A field at 0 is left out: a fresh v2ray may not have run its GC nor lived a second.
    may_be_zero = {"Uptime", "NumGC", "PauseTotalNs"}
    assert set(fields) <= set(their_fields) | may_be_zero, (fields, their_fields)
    assert {"NumGoroutine", "NumGC", "Alloc", "Sys", "LiveObjects"} <= set(fields)
    assert int(fields["NumGoroutine"]) >= 3  # the main thread, the wheel, a relay ...
    assert 10 * 2**20 < int(fields["Sys"]) < 2**32  # an RSS, in bytes


def test_restart_logger_reopens_a_rotated_log(tmp_path, tcp_echo: TcpEchoServer) -> None:
    """logrotate moves the access log away; after RestartLogger new lines go to a new file
    at the configured path, none to the moved one."""
    api_port, socks_port = ports(2)
    access = tmp_path / "access.log"
    config = api_config(api_port, [socks_in(socks_port)],
                        log={"loglevel": "warning", "access": str(access)})
    with V2SyncProcess(config):
        socks_echo(socks_port, tcp_echo.address, 10)
        rotated = tmp_path / "access.log.1"
        access.rename(rotated)
        result = v2ctl(api_port, "LoggerService.RestartLogger", "")
        assert result.returncode == 0, result.stdout + result.stderr
        before = rotated.read_text()
        socks_echo(socks_port, tcp_echo.address, 10)
        settled(api_port, "socks-in", lambda s: s.get(
            "inbound>>>socks-in>>>traffic>>>downlink", 0) >= 2 * 22)
    assert "[direct]" in access.read_text()
    assert rotated.read_text() == before


def _outbound_counters(process_class) -> Dict[str, int]:
    api_port, socks_port = ports(2)
    config = api_config(api_port, [socks_in(socks_port)])
    config["outbounds"] += [{"tag": "block", "protocol": "blackhole", "settings": {}},
                            {"tag": "dns-out", "protocol": "dns", "settings": {}}]
    with process_class(config):
        return query(api_port, "outbound>>>")


def test_every_tagged_outbound_has_counters_as_4_34(v2ray_bin: str) -> None:
    """From startup, at 0, whether or not the outbound ever dials (blackhole)."""
    ours = _outbound_counters(V2SyncProcess)
    assert ours == _outbound_counters(V2RayProcess)
    assert set(ours) == {f"outbound>>>{tag}>>>traffic>>>{way}"
                         for tag in ("direct", "block", "dns-out")
                         for way in ("uplink", "downlink")}


@pytest.mark.parametrize("implementation", [V2SyncProcess, V2RayProcess])
def test_query_stats_without_stats_as_4_34(implementation, v2ray_bin: str) -> None:
    """No "stats" section: QueryStats is an error, not an empty answer; GetStats finds no
    counter."""
    api_port, socks_port = ports(2)
    config = api_config(api_port, [socks_in(socks_port)])
    del config["stats"]
    with implementation(config):
        stats = v2ctl(api_port, "StatsService.QueryStats", "")
        one = v2ctl(api_port, "StatsService.GetStats", f'name: "{UP_NAME}"')
    assert stats.returncode == 255
    assert "QueryStats only works its own stats.Manager." in stats.stdout + stats.stderr
    assert one.returncode == 255 and f"{UP_NAME} not found." in one.stdout + one.stderr


@pytest.mark.parametrize("implementation", [V2SyncProcess, V2RayProcess])
def test_restart_logger_that_cannot_open_its_file(implementation, tmp_path, v2ray_bin: str,
                                                  tcp_echo: TcpEchoServer) -> None:
    """The log's directory is gone: RestartLogger fails, as 4.34's, naming the file. v2sync
    keeps writing to the file it had, with no logging error, and goes on serving."""
    api_port, socks_port = ports(2)
    logs = tmp_path / "logs"
    logs.mkdir()
    config = api_config(api_port, [socks_in(socks_port)],
                        log={"loglevel": "warning", "access": str(logs / "access.log")})
    with implementation(config) as process:
        socks_echo(socks_port, tcp_echo.address, 10)
        shutil.rmtree(logs)
        result = v2ctl(api_port, "LoggerService.RestartLogger", "")
        assert result.returncode == 255
        assert "failed to start logger" in result.stdout + result.stderr
        assert "access.log" in result.stdout + result.stderr
        socks_echo(socks_port, tcp_echo.address, 10)
        if implementation is V2SyncProcess:
            assert "Logging error" not in process.log_text()


@pytest.mark.parametrize("services", [["StatsService"], []])
def test_services_not_enabled_are_unimplemented(services, tcp_echo: TcpEchoServer) -> None:
    """Only the configured services answer; the rest are gRPC UNIMPLEMENTED, as 4.34."""
    api_port, socks_port = ports(2)
    with V2SyncProcess(api_config(api_port, [socks_in(socks_port)], services=services)):
        result = v2ctl(api_port, "LoggerService.RestartLogger", "")
        assert result.returncode == 255
        assert "Unimplemented" in result.stderr + result.stdout
        stats = v2ctl(api_port, "StatsService.QueryStats", "")
        assert (stats.returncode == 0) == bool(services)


DATAGRAMS = 5


def _echo_datagrams(socks_port: int, echo) -> None:
    """DATAGRAMS datagrams through a SOCKS5 UDP ASSOCIATE (PySocks), each echoed back."""
    import socket

    import socks

    with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", socks_port)
        sock.settimeout(10)
        for i in range(DATAGRAMS):
            sock.sendto(b"d" * (100 + i), ("127.0.0.1", echo.port))
            sock.recvfrom(4096)


def _udp_run(process_class, echo) -> Dict[str, int]:
    api_port, socks_port = ports(2)
    inbound = socks_in(socks_port)
    inbound["settings"].update(udp=True, ip="127.0.0.1")
    with process_class(api_config(api_port, [inbound])):
        _echo_datagrams(socks_port, echo)
        return settled(api_port, "", lambda s: s.get(
            "outbound>>>direct>>>traffic>>>downlink", 0) > 0, stable=_exact)


def test_udp_datagrams_count_on_the_inbound_as_4_34(v2ray_bin: str) -> None:
    """SOCKS UDP ASSOCIATE: the control connection and each datagram (with its SOCKS
    header) on the inbound's counters, each payload on freedom's: the same figures as
    4.34's."""
    from support.peers import UdpEchoServer

    with UdpEchoServer() as echo:
        ours = _udp_run(V2SyncProcess, echo)
        theirs = _udp_run(V2RayProcess, echo)
    assert _exact(ours) == _exact(theirs)
    sent = sum(100 + i for i in range(DATAGRAMS))
    assert ours["inbound>>>socks-in>>>traffic>>>uplink"] > sent
    assert ours["outbound>>>direct>>>traffic>>>uplink"] == sent


def _tls_run(process_class, echo, pki) -> Dict[str, int]:
    import socket
    import ssl


    api_port, socks_port = ports(2)
    inbound = socks_in(socks_port)
    inbound["streamSettings"] = {"security": "tls", "tlsSettings": pki.server_tls()}
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    with process_class(api_config(api_port, [inbound])):
        with socket.create_connection(("127.0.0.1", socks_port), 10) as raw, \
                context.wrap_socket(raw, server_hostname="v2sync.test") as sock:
            host, port = echo.address
            sock.sendall(b"\x05\x01\x00")
            assert sock.recv(2) == b"\x05\x00"
            sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big"))
            assert recv_exactly(sock, 10)[1] == 0  # the CONNECT succeeded
            sock.sendall(b"t" * SOCKS_BYTES)
            assert recv_exactly(sock, SOCKS_BYTES) == b"t" * SOCKS_BYTES
        return settled(api_port, "", lambda s: s.get(
            "inbound>>>socks-in>>>traffic>>>downlink", 0) >= SOCKS_DOWN, stable=_exact)


def test_inbound_counters_count_above_tls_as_4_34(v2ray_bin: str, tcp_echo: TcpEchoServer,
                                                   pki) -> None:
    """SOCKS5 over TLS: the inbound counts the SOCKS bytes, not TLS records, as 4.34."""
    ours = _tls_run(V2SyncProcess, tcp_echo, pki)
    theirs = _tls_run(V2RayProcess, tcp_echo, pki)
    assert _exact(ours) == _exact(theirs)
    assert ours["inbound>>>socks-in>>>traffic>>>uplink"] == SOCKS_UP
    assert ours["inbound>>>socks-in>>>traffic>>>downlink"] == SOCKS_DOWN


MUX_SIZES = (30_000, 50_000, 70_000)


def _mux_run(process_class, echo: TcpEchoServer) -> Dict[str, int]:
    """A v2ray 4.34 client multiplexing three connections over one VMess connection."""
    api_port, vmess_port, client_port = ports(3)
    config = api_config(api_port, [vmess_inbound([vmess_client_entry(email=EMAIL)],
                                                 port=vmess_port)])
    client = client_config(client_port, vmess_port, "aes-128-gcm", 0)
    client["outbounds"][0]["mux"] = {"enabled": True, "concurrency": 8}
    with process_class(config), V2RayProcess(client):
        for size in MUX_SIZES:
            socks_echo(client_port, echo.address, size)
        return settled(api_port, "", lambda s: s.get(
            f"user>>>{EMAIL}>>>traffic>>>downlink", 0) >= sum(MUX_SIZES), stable=_exact)


def test_mux_sub_connections_count_on_their_user_as_4_34(v2ray_bin: str,
                                                         tcp_echo: TcpEchoServer) -> None:
    ours = _mux_run(V2SyncProcess, tcp_echo)
    theirs = _mux_run(V2RayProcess, tcp_echo)
    assert sorted(ours) == sorted(theirs)
    assert _exact(ours) == _exact(theirs) == {
        f"user>>>{EMAIL}>>>traffic>>>{d}": sum(MUX_SIZES) for d in ("uplink", "downlink")} | {
        f"outbound>>>direct>>>traffic>>>{d}": sum(MUX_SIZES) for d in ("uplink", "downlink")}


def _ss_udp_run(process_class, echo, ss_port: int) -> Dict[str, int]:
    from ss_helpers import ss_client_config

    api_port, socks_port = ports(2)
    client = ss_client_config(socks_port, ss_port, "aes-128-gcm")
    config = api_config(api_port, client["inbounds"], outbounds=client["outbounds"])
    with process_class(config):
        _echo_datagrams(socks_port, echo)
        return settled(api_port, "", lambda s: s.get(
            "outbound>>>ss-out>>>traffic>>>downlink", 0) > 0, stable=_exact)


def test_shadowsocks_udp_datagrams_count_on_the_outbound_as_4_34(v2ray_bin: str) -> None:
    """A Shadowsocks client's UDP: each sealed datagram on the outbound's counters, the
    figures 4.34's client counts (salt, tag, address and payload of every datagram)."""
    from ss_helpers import ss_server_config
    from support.peers import UdpEchoServer

    ss_port, = ports(1)
    with UdpEchoServer() as echo, V2RayProcess(ss_server_config(ss_port, "aes-128-gcm")):
        ours = _ss_udp_run(V2SyncProcess, echo, ss_port)
        theirs = _ss_udp_run(V2RayProcess, echo, ss_port)
    names = ("outbound>>>ss-out>>>traffic>>>uplink", "outbound>>>ss-out>>>traffic>>>downlink")
    assert {n: ours[n] for n in names} == {n: theirs[n] for n in names}
    sent = sum(100 + i for i in range(DATAGRAMS))
    assert ours[names[0]] == sent + DATAGRAMS * (16 + 16 + 7)  # salt, tag, IPv4 address


def _ss_in_udp_run(process_class, echo) -> Dict[str, int]:
    """A v2ray 4.34 Shadowsocks client sends UDP to ``process_class``'s Shadowsocks inbound,
    whose one user has an email."""
    from ss_helpers import ss_client_config, ss_server_config

    api_port, ss_port, socks_port = ports(3)
    inbound = ss_server_config(ss_port, "aes-128-gcm")["inbounds"][0]
    inbound["settings"]["email"] = EMAIL
    with process_class(api_config(api_port, [inbound])), \
            V2RayProcess(ss_client_config(socks_port, ss_port, "aes-128-gcm")):
        _echo_datagrams(socks_port, echo)
        return settled(api_port, "", lambda s: s.get(
            "outbound>>>direct>>>traffic>>>downlink", 0) > 0, stable=_exact)


def test_shadowsocks_udp_counts_on_its_user_as_4_34(v2ray_bin: str) -> None:
    """The inbound's user owns its UDP datagrams, as 4.34's handlerUDPPayload sets
    inbound.User: they count on the user's counters (and a ``user`` rule matches them).
    v2sync's UDP sessions had no user."""
    from support.peers import UdpEchoServer

    with UdpEchoServer() as echo:
        ours = _ss_in_udp_run(V2SyncProcess, echo)
        theirs = _ss_in_udp_run(V2RayProcess, echo)
    sent = sum(100 + i for i in range(DATAGRAMS))
    user = {f"user>>>{EMAIL}>>>traffic>>>{d}": sent for d in ("uplink", "downlink")}
    assert {k: v for k, v in theirs.items() if k.startswith("user")} == user
    assert {k: v for k, v in ours.items() if k.startswith("user")} == user


def _socks_out_udp_run(process_class, echo, upstream_port: int) -> Dict[str, int]:
    api_port, socks_port = ports(2)
    inbound = dict(socks_in(socks_port), settings={"auth": "noauth", "udp": True,
                                                   "ip": "127.0.0.1"})
    outbound = {"tag": "so-out", "protocol": "socks", "settings": {"servers": [
        {"address": "127.0.0.1", "port": upstream_port}]}}
    with process_class(api_config(api_port, [inbound], outbounds=[outbound])):
        _echo_datagrams(socks_port, echo)
        return settled(api_port, "", lambda s: s.get(
            "outbound>>>so-out>>>traffic>>>downlink", 0) > 0, stable=_exact)


def test_socks_outbound_udp_counts_on_the_outbound_as_4_34(v2ray_bin: str) -> None:
    """The SOCKS client's UDP relay socket counts each datagram whole (its SOCKS header
    included) on the outbound's counters, with the control connection's handshake, as
    4.34's dialer wraps it. v2sync counted the handshake only."""
    from support.peers import UdpEchoServer

    upstream_port, = ports(1)
    upstream = {"log": {"loglevel": "warning", "access": "none"},
                "inbounds": [dict(socks_in(upstream_port), settings={
                    "auth": "noauth", "udp": True, "ip": "127.0.0.1"})],
                "outbounds": [{"protocol": "freedom", "settings": {}}]}
    with UdpEchoServer() as echo, V2RayProcess(upstream):
        ours = _socks_out_udp_run(V2SyncProcess, echo, upstream_port)
        theirs = _socks_out_udp_run(V2RayProcess, echo, upstream_port)
    names = ("outbound>>>so-out>>>traffic>>>uplink", "outbound>>>so-out>>>traffic>>>downlink")
    assert {n: ours[n] for n in names} == {n: theirs[n] for n in names}
    sent = sum(100 + i for i in range(DATAGRAMS))
    assert ours[names[0]] > sent + DATAGRAMS * 10  # every datagram, its IPv4 header too
