"""AlterInbound's TypedMessages to ``clients[]`` entries (socket-free): each account type,
Xray's type names, and clear errors for what is not an operation or an account."""
from __future__ import annotations

import pytest

from v2sync.app.commander.pb.app.proxyman.command import command_pb2 as handler_pb
from v2sync.app.commander.pb.common.protocol import headers_pb2, user_pb2
from v2sync.app.commander.pb.common.serial import typed_message_pb2
from v2sync.app.commander.pb.proxy.trojan import config_pb2 as trojan_pb
from v2sync.app.commander.pb.proxy.vless import account_pb2 as vless_pb
from v2sync.app.commander.pb.proxy.vmess import account_pb2 as vmess_pb
from v2sync.app.commander.users import client_entry, operation_of
from v2sync.common.errors import V2SyncError

ID = "6f1ad2c4-35b8-4a55-8e3b-1c9d0e2f7a61"


def typed(message, type_name=None):
    return typed_message_pb2.TypedMessage(type=type_name or message.DESCRIPTOR.full_name,
                                          value=message.SerializeToString())


def user(account, type_name=None):
    return user_pb2.User(level=2, email="a@b", account=typed(account, type_name))


@pytest.mark.parametrize("account, entry", [
    (vmess_pb.Account(id=ID, alter_id=4, security_settings=headers_pb2.SecurityConfig(
        type=headers_pb2.CHACHA20_POLY1305)),
     {"id": ID, "alterId": 4, "security": "chacha20-poly1305"}),
    (vmess_pb.Account(id=ID), {"id": ID, "alterId": 0}),  # AUTO/UNKNOWN: the config default
    (vless_pb.Account(id=ID, flow="xtls-rprx-direct"), {"id": ID, "flow": "xtls-rprx-direct"}),
    (trojan_pb.Account(password="secret"), {"password": "secret"}),
])
def test_accounts_become_config_entries(account, entry) -> None:
    protocol = account.DESCRIPTOR.full_name.split(".")[-2]
    assert client_entry(user(account), protocol) == {**entry, "email": "a@b", "level": 2}


@pytest.mark.parametrize("account, protocol", [
    (vmess_pb.Account(id=ID), "trojan"),
    (vmess_pb.Account(id=ID), "vless"),
    (vless_pb.Account(id=ID), "vmess"),
    (trojan_pb.Account(password="secret"), "vless"),
])
def test_an_account_of_another_protocol_is_refused(account, protocol) -> None:
    with pytest.raises(V2SyncError, match=f"cannot be a user of a {protocol} inbound"):
        client_entry(user(account), protocol)


def test_xray_type_names_are_read_as_4_34s() -> None:
    xray_type = "xray.proxy.vless.Account"
    assert client_entry(user(vless_pb.Account(id=ID), xray_type), "vless") == {
        "id": ID, "email": "a@b", "level": 2}
    operation = typed(handler_pb.RemoveUserOperation(email="a@b"),
                      "xray.app.proxyman.command.RemoveUserOperation")
    assert operation_of(operation).email == "a@b"


def test_unknown_types_and_garbage_are_clear_errors() -> None:
    with pytest.raises(V2SyncError, match="not an inbound operation"):  # a message 4.34 knows
        operation_of(typed(vless_pb.Account(id=ID)))
    with pytest.raises(V2SyncError, match="unknown operation"):
        operation_of(typed_message_pb2.TypedMessage(type="no.such.Message"))
    with pytest.raises(V2SyncError, match="unknown account type"):
        client_entry(user(handler_pb.RemoveUserOperation(email="x")), "vmess")
    garbage = typed_message_pb2.TypedMessage(
        type="v2ray.core.app.proxyman.command.AddUserOperation", value=b"\xff\xff\xff")
    with pytest.raises(V2SyncError, match="invalid"):
        operation_of(garbage)
