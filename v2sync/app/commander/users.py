"""AlterInbound's operations and accounts: protobuf TypedMessages to config entries.

An operation is a ``TypedMessage{type, value}``; its user's account is another one. The
account becomes one entry of the inbound's ``clients`` list as a config file writes it, so
each protocol checks it with its own config code (``features.proxy.UserManager``). Xray's
type names (``xray.…``) are read as 4.34's (``v2ray.core.…``): the messages are the same.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

from google.protobuf import descriptor_pool

from v2sync.app.commander.pb.app.proxyman.command import command_pb2 as handler_pb
from v2sync.app.commander.pb.common.protocol import headers_pb2
from v2sync.app.commander.pb.proxy.trojan import config_pb2 as trojan_pb
from v2sync.app.commander.pb.proxy.vless import account_pb2 as vless_pb
from v2sync.app.commander.pb.proxy.vmess import account_pb2 as vmess_pb
from v2sync.common.errors import V2SyncError

# 4.34's errors start with the Go package that made them.
COMMAND_PACKAGE = "v2ray.com/core/app/proxyman/command"
V2RAY_PREFIX = "v2ray.core."
XRAY_PREFIX = "xray."
OPERATIONS = {
    "v2ray.core.app.proxyman.command.AddUserOperation": handler_pb.AddUserOperation,
    "v2ray.core.app.proxyman.command.RemoveUserOperation": handler_pb.RemoveUserOperation,
}
# infra/conf/vmess.go's names for SecurityType (LEGACY and UNKNOWN read as auto there too).
VMESS_SECURITY = {
    headers_pb2.AES128_GCM: "aes-128-gcm",
    headers_pb2.CHACHA20_POLY1305: "chacha20-poly1305",
    headers_pb2.NONE: "none",
}


def canonical_type(name: str) -> str:
    return V2RAY_PREFIX + name[len(XRAY_PREFIX):] if name.startswith(XRAY_PREFIX) else name


def _parse(message_type: Any, value: bytes, what: str) -> Any:
    try:
        return message_type.FromString(value)
    except Exception as e:  # protobuf's DecodeError and whatever its parser raises
        raise V2SyncError(f"invalid {what}: {e}") from None


def operation_of(typed: Any) -> Any:
    """The AddUserOperation or RemoveUserOperation a TypedMessage carries. Another message
    4.34 knows is "not an inbound operation", as there; one it does not, an "unknown
    operation" (4.34's registry fails), with the types v2sync takes."""
    name = canonical_type(typed.type)
    message_type = OPERATIONS.get(name)
    if message_type is None:
        if known_message(name):
            raise V2SyncError(f"{COMMAND_PACKAGE}: not an inbound operation")
        raise V2SyncError(f"{COMMAND_PACKAGE}: unknown operation > unknown type "
                          f"{typed.type!r} (supported: AddUserOperation, RemoveUserOperation)")
    return _parse(message_type, typed.value, typed.type)


def known_message(name: str) -> bool:
    """Whether ``name`` is a protobuf message this process has loaded (4.34's registry
    holds every message compiled into it; v2sync's, the API's own)."""
    try:
        descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return False
    return True


def _vmess(account: Any) -> Dict[str, Any]:
    entry = {"id": account.id, "alterId": account.alter_id}
    security = VMESS_SECURITY.get(account.security_settings.type)
    if security:
        entry["security"] = security
    return entry


def _vless(account: Any) -> Dict[str, Any]:
    entry = {"id": account.id}
    if account.flow:  # an empty flow is the config's default: left out, as a file leaves it
        entry["flow"] = account.flow
    return entry


def _trojan(account: Any) -> Dict[str, Any]:
    return {"password": account.password}


# Each account type, by the protocol whose inbounds take it (``UserManager.account_protocol``).
ACCOUNTS: Dict[str, Any] = {
    "v2ray.core.proxy.vmess.Account": ("vmess", vmess_pb.Account, _vmess),
    "v2ray.core.proxy.vless.Account": ("vless", vless_pb.Account, _vless),
    "v2ray.core.proxy.trojan.Account": ("trojan", trojan_pb.Account, _trojan),
}


def client_entry(user: Any, protocol: str) -> Dict[str, Any]:
    """A protocol.User as one ``clients[]`` entry of a ``protocol`` inbound: the account's
    fields, email and level. An account of another protocol is refused: 4.34 casts it to
    its own type and the whole process panics; read as a config entry, a VMess account
    made a Trojan user with an empty password, whom anyone could be."""
    if not user.HasField("account"):
        raise V2SyncError("v2ray.com/core/common/protocol: Account missing")  # ToMemoryUser
    found = ACCOUNTS.get(canonical_type(user.account.type))
    if found is None:
        raise V2SyncError(f"unknown account type {user.account.type!r} "
                          f"(supported: {', '.join(sorted(ACCOUNTS))})")
    kind, message_type, convert = found
    if kind != protocol:
        raise V2SyncError(f"a {kind} account cannot be a user of a {protocol} inbound "
                          f"(send a v2ray.core.proxy.{protocol}.Account)")
    convert_fn: Callable[[Any], Dict[str, Any]] = convert
    entry = convert_fn(_parse(message_type, user.account.value, user.account.type))
    entry.update(email=user.email, level=user.level)
    return entry
