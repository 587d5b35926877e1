"""HandlerService's error texts, as v2ray 4.34 words them: the same calls go to one v2sync and
one v2ray, each with VMess, VLESS, Trojan and SOCKS inbounds, and each answer's status and
details must be the same. 4.34 starts each text with the Go package that made it
(``v2ray.com/core/app/proxyman/command: proxy is not a UserManager``), and panels match
them. A user's parse errors keep v2sync's own cause after 4.34's ``failed to parse user >``
(each protocol's config code words its own), so those are compared up to the cause."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import grpc
import pytest

from api_helpers import api_config, ports, socks_in
from keyed_helpers import server_inbound
from support.procs import V2RayProcess, V2SyncProcess
from test_api_handler import V2RAY, Api, _typed, remove_user
from v2sync.app.commander.pb.app.proxyman.command import command_pb2 as handler_pb
from v2sync.app.commander.pb.app.stats.command import command_pb2 as stats_pb
from v2sync.app.commander.pb.common.protocol import user_pb2
from v2sync.app.commander.pb.proxy.trojan import config_pb2 as trojan_pb
from v2sync.app.commander.pb.proxy.vless import account_pb2 as vless_pb
from v2sync.app.commander.pb.proxy.vmess import account_pb2 as vmess_pb
from vmess_helpers import vmess_client_entry, vmess_inbound

TAKEN = "u@test"  # the configured user of every keyed inbound (keyed_helpers' too)
ACCOUNTS = {"vmess": vmess_pb.Account(id="3d1c9a7e-2b4f-4c6d-8e0a-5f7b9c1d3e5f"),
            "vless": vless_pb.Account(id="4e2d0b8f-3c5a-4d7e-9f1b-6a8c0d2e4f60"),
            "trojan": trojan_pb.Account(password="another password")}
Answer = Tuple[str, str]


def _add(email: str, account: Any = None) -> Any:
    user = user_pb2.User(email=email, account=_typed(account) if account is not None else None)
    return _typed(handler_pb.AddUserOperation(user=user))


def calls() -> Dict[str, Tuple[str, Any]]:
    """name -> (method, request); each fails in 4.34 without ending the process."""
    table: Dict[str, Tuple[str, Any]] = {
        "unknown-tag": ("AlterInbound", handler_pb.AlterInboundRequest(
            tag="nope", operation=remove_user(TAKEN))),
        "empty-tag": ("AlterInbound", handler_pb.AlterInboundRequest(
            tag="", operation=remove_user(TAKEN))),
        "not-a-user-manager": ("AlterInbound", handler_pb.AlterInboundRequest(
            tag="socks-in", operation=remove_user(TAKEN))),
        "not-an-inbound-operation": ("AlterInbound", handler_pb.AlterInboundRequest(
            tag="vmess-in", operation=_typed(stats_pb.GetStatsRequest(name="x")))),
        "not-an-outbound-operation": ("AlterOutbound", handler_pb.AlterOutboundRequest(
            tag="direct", operation=_typed(stats_pb.GetStatsRequest(name="x")))),
        "account-missing": ("AlterInbound", handler_pb.AlterInboundRequest(
            tag="vmess-in", operation=_add("new@test"))),
    }
    for protocol, account in ACCOUNTS.items():
        tag = f"{protocol}-in"
        table[f"{protocol}-taken"] = ("AlterInbound", handler_pb.AlterInboundRequest(
            tag=tag, operation=_add(TAKEN.upper(), account)))
        table[f"{protocol}-not-found"] = ("AlterInbound", handler_pb.AlterInboundRequest(
            tag=tag, operation=remove_user("nobody@test")))
        table[f"{protocol}-empty-email"] = ("AlterInbound", handler_pb.AlterInboundRequest(
            tag=tag, operation=remove_user("")))
    table["vmess-bad-id"] = ("AlterInbound", handler_pb.AlterInboundRequest(
        tag="vmess-in", operation=_add("new@test", vmess_pb.Account(id="not-a-uuid"))))
    return table


RESPONSES = {"AlterInbound": handler_pb.AlterInboundResponse,
             "AlterOutbound": handler_pb.AlterOutboundResponse}
PARSE_ERRORS = ("vmess-bad-id",)  # compared up to the cause (see above)


def answers(implementation: str) -> Dict[str, Answer]:
    api_port, socks_port, vmess_port, vless_port, trojan_port = ports(5)
    config = api_config(api_port, [
        socks_in(socks_port),
        vmess_inbound([vmess_client_entry(email=TAKEN)], port=vmess_port),
        server_inbound("vless", vless_port, {}, tag="vless-in"),
        server_inbound("trojan", trojan_port, {}, tag="trojan-in")])
    process = V2SyncProcess if implementation == "v2sync" else V2RayProcess
    got: Dict[str, Answer] = {}
    with process(config), grpc.insecure_channel(f"127.0.0.1:{api_port}") as channel:
        api = Api(channel, V2RAY)
        for name, (method, request) in calls().items():
            try:
                api.call(method, request, RESPONSES[method])
                got[name] = ("OK", "")
            except grpc.RpcError as error:
                got[name] = (error.code().name, error.details() or "")
    return got


@pytest.fixture(scope="module")
def both(v2ray_bin: str) -> Dict[str, Dict[str, Answer]]:
    return {name: answers(name) for name in ("v2ray", "v2sync")}


@pytest.mark.parametrize("name", sorted(calls()))
def test_error_text_is_4_34s(both: Dict[str, Dict[str, Answer]], name: str) -> None:
    theirs, ours = both["v2ray"][name], both["v2sync"][name]
    if name in PARSE_ERRORS:
        theirs = (theirs[0], theirs[1].split(" > ")[0])
        ours = (ours[0], ours[1].split(" > ")[0])
    assert ours == theirs
