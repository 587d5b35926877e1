"""``v2sync api``: v2ctl's API calls as subcommands (v2ray ``infra/control/api.go``).

    v2sync api [--server HOST:PORT] [--timeout S] stats NAME [--reset]
    v2sync api statsquery [--pattern P] [--reset]
    v2sync api sysstats
    v2sync api restartlogger
    v2sync api adduser --inbound TAG --email E (--uuid ID [--alter-id N] | --vless-id ID
                       [--flow F] | --password P) [--level L]
    v2sync api rmuser --inbound TAG --email E

Answers print as v2ctl prints them (Go's protobuf text format: ``stat: <`` … ``>``, fields
at their zero value left out), so scripts written against v2ctl read them unchanged. An
error prints ``v2sync api: …`` and exits 255, as v2ctl does.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable, List, Tuple

EXIT_API_ERROR = 255
DEFAULT_SERVER = "127.0.0.1:8080"  # v2ctl's default
V2RAY = "v2ray.core.app"


def add_parser(sub: Any) -> None:
    api = sub.add_parser("api", help="call the gRPC API of a running v2sync or v2ray (v2ctl api)")
    api.add_argument("--server", "-s", default=DEFAULT_SERVER, metavar="HOST:PORT",
                     help=f"the API's address (default {DEFAULT_SERVER}, as v2ctl)")
    api.add_argument("--timeout", type=seconds, default=3.0, help="seconds (default 3)")
    calls = api.add_subparsers(dest="call", required=True)
    stats = calls.add_parser("stats", help="StatsService.GetStats")
    stats.add_argument("name")
    stats.add_argument("--reset", action="store_true")
    query = calls.add_parser("statsquery", help="StatsService.QueryStats")
    query.add_argument("--pattern", default="", help="substring of the names ('' = all)")
    query.add_argument("--reset", action="store_true")
    calls.add_parser("sysstats", help="StatsService.GetSysStats")
    calls.add_parser("restartlogger", help="LoggerService.RestartLogger (reopen log files)")
    add = calls.add_parser("adduser", help="HandlerService.AlterInbound AddUserOperation")
    add.add_argument("--inbound", required=True, metavar="TAG")
    add.add_argument("--email", required=True)
    add.add_argument("--level", type=int, default=0)
    account = add.add_mutually_exclusive_group(required=True)
    account.add_argument("--uuid", help="a VMess user's id")
    account.add_argument("--vless-id", help="a VLESS user's id")
    account.add_argument("--password", help="a Trojan user's password")
    add.add_argument("--alter-id", type=int, default=0, help="VMess alterId (default 0)")
    add.add_argument("--flow", default="", help="VLESS flow")
    rm = calls.add_parser("rmuser", help="HandlerService.AlterInbound RemoveUserOperation")
    rm.add_argument("--inbound", required=True, metavar="TAG")
    rm.add_argument("--email", required=True)


def go_text(message: Any, indent: str = "") -> str:
    """Go's ``proto.MarshalTextString`` (what v2ctl prints): set fields in field order,
    messages in ``< >``."""
    lines: List[str] = []
    for field, value in message.ListFields():
        values = value if _is_repeated(field) else [value]
        for item in values:
            if field.type == field.TYPE_MESSAGE:
                lines.append(f"{indent}{field.name}: <")
                lines.append(go_text(item, indent + "  ").rstrip("\n"))
                lines.append(f"{indent}>")
            elif field.type == field.TYPE_STRING:
                lines.append(f"{indent}{field.name}: {json.dumps(item, ensure_ascii=False)}")
            elif field.type == field.TYPE_BOOL:
                lines.append(f"{indent}{field.name}: {str(item).lower()}")
            else:
                lines.append(f"{indent}{field.name}: {item}")
    return "".join(line + "\n" for line in lines if line)


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5; older ones have label
    return bool(repeated) if repeated is not None else field.label == field.LABEL_REPEATED


def _request(args: argparse.Namespace) -> Tuple[str, Any, Any]:
    """(path, request, response type) for the subcommand."""
    from v2sync.app.commander.pb.app.log.command import config_pb2 as log_pb
    from v2sync.app.commander.pb.app.stats.command import command_pb2 as stats_pb

    stats = f"/{V2RAY}.stats.command.StatsService/"
    if args.call == "stats":
        return (stats + "GetStats", stats_pb.GetStatsRequest(name=args.name, reset=args.reset),
                stats_pb.GetStatsResponse)
    if args.call == "statsquery":
        return (stats + "QueryStats",
                stats_pb.QueryStatsRequest(pattern=args.pattern, reset=args.reset),
                stats_pb.QueryStatsResponse)
    if args.call == "sysstats":
        return stats + "GetSysStats", stats_pb.SysStatsRequest(), stats_pb.SysStatsResponse
    if args.call == "restartlogger":
        return (f"/{V2RAY}.log.command.LoggerService/RestartLogger",
                log_pb.RestartLoggerRequest(), log_pb.RestartLoggerResponse)
    return _alter_inbound(args)


def _typed(message: Any) -> Any:
    from v2sync.app.commander.pb.common.serial import typed_message_pb2

    return typed_message_pb2.TypedMessage(type=message.DESCRIPTOR.full_name,
                                          value=message.SerializeToString())


def _account(args: argparse.Namespace) -> Any:
    from v2sync.app.commander.pb.proxy.trojan import config_pb2 as trojan_pb
    from v2sync.app.commander.pb.proxy.vless import account_pb2 as vless_pb
    from v2sync.app.commander.pb.proxy.vmess import account_pb2 as vmess_pb

    if args.uuid:
        return vmess_pb.Account(id=args.uuid, alter_id=args.alter_id)
    if args.vless_id:
        return vless_pb.Account(id=args.vless_id, flow=args.flow)
    return trojan_pb.Account(password=args.password)


def _alter_inbound(args: argparse.Namespace) -> Tuple[str, Any, Any]:
    from v2sync.app.commander.pb.app.proxyman.command import command_pb2 as handler_pb
    from v2sync.app.commander.pb.common.protocol import user_pb2

    if args.call == "adduser":
        user = user_pb2.User(level=args.level, email=args.email, account=_typed(_account(args)))
        operation = _typed(handler_pb.AddUserOperation(user=user))
    else:
        operation = _typed(handler_pb.RemoveUserOperation(email=args.email))
    return (f"/{V2RAY}.proxyman.command.HandlerService/AlterInbound",
            handler_pb.AlterInboundRequest(tag=args.inbound, operation=operation),
            handler_pb.AlterInboundResponse)


MAX_SECONDS = 24 * 3600.0


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 and at most a day (nan, inf or
    1e308 reached the socket and the selector as a traceback; found by a review)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_SECONDS:  # also false for nan
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds above 0, at most "
                                         f"{MAX_SECONDS:g}")
    return value


def run(args: argparse.Namespace, say: Callable[[str], None],
        complain: Callable[[str], None]) -> int:
    """The answer goes to ``say`` (stdout), an error to ``complain`` (stderr), as v2ctl
    writes them."""
    from v2sync.app.commander.client import GrpcClient
    from v2sync.app.commander.grpc import GrpcError
    from v2sync.common.errors import V2SyncError
    from v2sync.common.net import parse_host_port

    try:
        host, port = parse_host_port(args.server, "--server")
        path, request, response_type = _request(args)
        with GrpcClient(host, port, args.timeout) as client:
            response = client.call(path, request, response_type)
    except GrpcError as e:
        complain(f"v2sync api: {path.rsplit('.', 1)[-1]}: rpc error: code = "
                 f"{e.status.name} desc = {e}")
        return EXIT_API_ERROR
    except V2SyncError as e:
        complain(f"v2sync api: {e}")
        return EXIT_API_ERROR
    text = go_text(response)
    if text:
        say(text.rstrip("\n"))
    return 0
