"""The stats API with the real client: ``v2ctl api`` against v2sync and against v2ray 4.34
on the same config and the same traffic; the counters are compared with each other and
with the bytes the test sent."""
from __future__ import annotations

import re
from typing import Dict, Tuple

import pytest

from api_helpers import (EMAIL, api_config, parse_stats, ports, settled, socks_echo, socks_in,
                         v2ctl)
from support.peers import TcpEchoServer
from support.procs import V2RayProcess, V2SyncProcess
from vmess_helpers import client_config, vmess_client_entry, vmess_inbound

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
    assert "no>>>such not found." in our_calls[2].stderr + our_calls[2].stdout
    assert "no>>>such not found." in their_calls[2].stderr + their_calls[2].stdout
    _check_sys_stats(our_calls[3].stdout, their_calls[3].stdout)


def _check_sys_stats(ours: str, theirs: str) -> None:
    fields = dict(re.findall(r"^(\w+): (\d+)$", ours, re.M))
    their_fields = dict(re.findall(r"^(\w+): (\d+)$", theirs, re.M))
    assert set(fields) <= set(their_fields), (fields, their_fields)
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
    assert "[socks-in -> direct]" in access.read_text()
    assert rotated.read_text() == before


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
