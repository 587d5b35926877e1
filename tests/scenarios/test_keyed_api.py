"""The API's AlterInbound on VLESS and Trojan inbounds (HandlerService through grpcio),
the same calls against v2ray 4.34: a user added connects at once, a duplicate email is
refused, a removed user is refused at once, removing it again says it is not found."""
from __future__ import annotations

from typing import Any

import grpc
import pytest

from api_helpers import api_config, ports
from scenarios.keyed_helpers import client_config, client_outbound, server_inbound
from support.peers import TcpEchoServer
from support.procs import V2RayProcess, V2SyncProcess
from test_api_handler import (NEW_EMAIL, Api, _typed, assert_user_changes,
                              channels)  # noqa: F401 (a fixture)
from v2sync.app.commander.pb.app.proxyman.command import command_pb2 as handler_pb
from v2sync.app.commander.pb.common.protocol import user_pb2
from v2sync.app.commander.pb.proxy.trojan import config_pb2 as trojan_pb
from v2sync.app.commander.pb.proxy.vless import account_pb2 as vless_pb

NEW_ID = "6f1ad2c4-35b8-4a55-8e3b-1c9d0e2f7a61"
NEW_PASSWORD = "a password added at run time"


def add_user(protocol: str, email: str) -> Any:
    account = (vless_pb.Account(id=NEW_ID, encryption="none") if protocol == "vless"
               else trojan_pb.Account(password=NEW_PASSWORD))
    user = user_pb2.User(level=0, email=email, account=_typed(account))
    return _typed(handler_pb.AddUserOperation(user=user))


@pytest.mark.parametrize("implementation", ["v2sync", "v2ray"])
@pytest.mark.parametrize("protocol", ["vless", "trojan"])
def test_add_and_remove_users(implementation: str, protocol: str, v2ray_bin: str,
                              tcp_echo: TcpEchoServer, channels: list) -> None:  # noqa: F811
    api_port, server_port, bob_port, carol_port = ports(4)
    config = api_config(api_port, [server_inbound(protocol, server_port, {}, tag="keyed-in")])
    server_class = V2SyncProcess if implementation == "v2sync" else V2RayProcess
    carol = client_outbound(protocol, server_port, {}, user_id=NEW_ID, password=NEW_PASSWORD)
    with server_class(config), \
            V2RayProcess(client_config(bob_port, client_outbound(protocol, server_port, {}))), \
            V2RayProcess(client_config(carol_port, carol)):
        channels.append(grpc.insecure_channel(f"127.0.0.1:{api_port}"))
        assert_user_changes(Api(channels[-1], "v2ray.core.app"), "keyed-in",
                            add_user(protocol, NEW_EMAIL), bob_port, carol_port, tcp_echo)
