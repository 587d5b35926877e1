"""AlterInbound on VLESS and Trojan inbounds (grpcio), against v2sync and v2ray 4.34: a user
added connects at once and its traffic counts on its email, a removed one is refused at
once; a duplicate or an unknown user is an error on both."""
from __future__ import annotations

import hashlib
import socket
import time
from typing import Any

import grpc
import pytest

from api_helpers import api_config, ports
from keyed_helpers import client_config, client_outbound, server_inbound
from support.peers import TcpEchoServer
from support.procs import V2RayProcess, V2SyncProcess
from test_api_handler import (PROBE, PROBE_TIMEOUT, V2RAY, Api, _typed, echo_works,
                              grpc_error, remove_user)
from v2sync.app.commander.pb.app.proxyman.command import command_pb2 as handler_pb
from v2sync.app.commander.pb.app.stats.command import command_pb2 as stats_pb
from v2sync.app.commander.pb.common.protocol import user_pb2
from v2sync.app.commander.pb.proxy.trojan import config_pb2 as trojan_pb
from v2sync.app.commander.pb.proxy.vless import account_pb2 as vless_pb
from v2sync.app.commander.pb.proxy.vmess import account_pb2 as vmess_pb
from vmess_helpers import vmess_client_entry, vmess_inbound

NEW_ID = "3d1c9a7e-2b4f-4c6d-8e0a-5f7b9c1d3e5f"
NEW_PASSWORD = "a password the api adds"
ACCOUNTS = {"vless": vless_pb.Account(id=NEW_ID),
            "trojan": trojan_pb.Account(password=NEW_PASSWORD)}


def add_user(protocol: str) -> Any:
    user = user_pb2.User(email=f"new-{protocol}@test", account=_typed(ACCOUNTS[protocol]))
    return _typed(handler_pb.AddUserOperation(user=user))


@pytest.mark.parametrize("implementation", ["v2sync", "v2ray"])
def test_vless_and_trojan_users(implementation: str, v2ray_bin: str,
                               tcp_echo: TcpEchoServer) -> None:
    api_port, vless_port, trojan_port, vless_client, trojan_client = ports(5)
    config = api_config(api_port, [
        server_inbound("vless", vless_port, {}, tag="vless-in"),
        server_inbound("trojan", trojan_port, {}, tag="trojan-in")])
    config["policy"]["levels"]["0"]["handshake"] = 2
    clients = {
        "vless": V2RayProcess(client_config(vless_client, client_outbound(
            "vless", vless_port, {}, user_id=NEW_ID))),
        "trojan": V2RayProcess(client_config(trojan_client, client_outbound(
            "trojan", trojan_port, {}, password=NEW_PASSWORD)))}
    entry = {"vless": vless_client, "trojan": trojan_client}
    server_class = V2SyncProcess if implementation == "v2sync" else V2RayProcess
    with server_class(config), clients["vless"], clients["trojan"], \
            grpc.insecure_channel(f"127.0.0.1:{api_port}") as channel:
        api = Api(channel, V2RAY)
        for protocol in ("vless", "trojan"):
            tag, email = f"{protocol}-in", f"new-{protocol}@test"
            assert not echo_works(entry[protocol], tcp_echo), protocol
            api.alter(tag, add_user(protocol))
            assert echo_works(entry[protocol], tcp_echo), protocol
            error = grpc_error(lambda: api.alter(tag, add_user(protocol)))
            assert error.code() == grpc.StatusCode.UNKNOWN
            api.alter(tag, remove_user(email))
            assert not echo_works(entry[protocol], tcp_echo), protocol
            error = grpc_error(lambda: api.alter(tag, remove_user(email)))
            assert error.code() == grpc.StatusCode.UNKNOWN and "not found" in error.details()
            # The added user's traffic counted on its email (the one probe that passed).
            assert user_traffic(channel, email) == {"uplink": len(PROBE),
                                                    "downlink": len(PROBE)}


def user_traffic(channel: grpc.Channel, email: str) -> dict:
    query = channel.unary_unary(
        f"/{V2RAY}.stats.command.StatsService/QueryStats",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=stats_pb.QueryStatsResponse.FromString)
    answer = query(stats_pb.QueryStatsRequest(pattern=f"user>>>{email}>>>"), timeout=10)
    return {stat.name.rsplit(">>>", 1)[1]: stat.value for stat in answer.stat}


# An account of one protocol sent to another protocol's inbound, each way that matters.
MISMATCHED = [
    ("trojan-in", vmess_pb.Account(id=NEW_ID)),  # read as a config entry: password ""
    ("vless-in", trojan_pb.Account(password=NEW_PASSWORD)),
    ("vmess-in", vless_pb.Account(id=NEW_ID)),
]
DEATH_TIMEOUT = 5.0


@pytest.mark.parametrize("implementation", ["v2sync", "v2ray"])
def test_an_account_of_another_protocol_is_refused(implementation: str, v2ray_bin: str,
                                                  tcp_echo: TcpEchoServer) -> None:
    """4.34 casts the account to its inbound's type and the whole process panics (rc 2).
    v2sync refuses the call and keeps serving; before, a VMess account given to a Trojan
    inbound added a user whose password was empty, and anyone's request went through."""
    api_port, vless_port, trojan_port, vmess_port = ports(4)
    config = api_config(api_port, [
        server_inbound("vless", vless_port, {}, tag="vless-in"),
        server_inbound("trojan", trojan_port, {}, tag="trojan-in"),
        vmess_inbound([vmess_client_entry()], port=vmess_port, tag="vmess-in")])
    server_class = V2SyncProcess if implementation == "v2sync" else V2RayProcess
    with server_class(config) as server, \
            grpc.insecure_channel(f"127.0.0.1:{api_port}") as channel:
        api = Api(channel, V2RAY)
        if implementation == "v2ray":
            grpc_error(lambda: api.alter(*mismatched_user(*MISMATCHED[0])))
            assert exit_code(server, DEATH_TIMEOUT) == 2  # Go's exit code for a panic
            return
        for tag, account in MISMATCHED:
            error = grpc_error(lambda: api.alter(*mismatched_user(tag, account)))
            assert error.code() == grpc.StatusCode.UNKNOWN
            assert "cannot be a user of" in error.details(), error.details()
        assert not empty_password_works(trojan_port, tcp_echo)
        assert server.returncode is None


def exit_code(server: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while server.returncode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.returncode


def mismatched_user(tag: str, account: Any) -> Any:
    user = user_pb2.User(email="stranger@test", account=_typed(account))
    return tag, _typed(handler_pb.AddUserOperation(user=user))


def empty_password_works(trojan_port: int, echo: TcpEchoServer) -> bool:
    """A raw Trojan request (plain TCP) with the key of the empty password."""
    host, port = echo.address
    request = (hashlib.sha224(b"").hexdigest().encode() + b"\r\n\x01\x01"
               + socket.inet_aton(host) + port.to_bytes(2, "big") + b"\r\n" + PROBE)
    with socket.create_connection(("127.0.0.1", trojan_port), PROBE_TIMEOUT) as sock:
        sock.settimeout(PROBE_TIMEOUT)
        sock.sendall(request)
        got = b""
        while len(got) < len(PROBE):
            chunk = sock.recv(len(PROBE) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == PROBE
