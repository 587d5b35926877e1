"""The API's services over 4.34's messages (v2ray ``app/stats/command``,
``app/log/command``, ``app/proxyman/command``).

Each service is a table of methods; ``service_methods`` puts the enabled ones under 4.34's
``v2ray.core.app.*`` names and Xray's ``xray.app.*`` names, whose messages are the same on
the wire, so panels written for either find them. Errors are raised as ``V2SyncError`` with
4.34's wording where a client might show it (``"<name> not found."``); the server sends
them as gRPC UNKNOWN, as grpc-go sends a plain error.
"""
from __future__ import annotations

import logging
import resource
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from v2sync.app.commander.grpc import GrpcError, Method, Status
from v2sync.app.commander.pb.app.log.command import config_pb2 as log_pb
from v2sync.app.commander.pb.app.proxyman.command import command_pb2 as handler_pb
from v2sync.app.commander.pb.app.stats.command import command_pb2 as stats_pb
from v2sync.app.commander.users import (COMMAND_PACKAGE, client_entry, known_message,
                                        operation_of)
from v2sync.app.log.setup import reopen_files
from v2sync.app.stats.manager import StatsManager
from v2sync.app.stats.system import GcPauses, gc_collections, rss_bytes
from v2sync.common.errors import ConfigError, UserExists, UserNotFound, V2SyncError
from v2sync.features.proxy import UserManager

log = logging.getLogger(__name__)

PACKAGES = ("v2ray.core.app", "xray.app")
# 4.34's QueryStats without a "stats" section (GetStats then finds no counter by name).
NO_STATS = "QueryStats only works its own stats.Manager."
NO_CLUE = "not enough information for making a decision"  # Go's common.ErrNoClue
SERVICE_PATHS = {
    "StatsService": "stats.command.StatsService",
    "LoggerService": "log.command.LoggerService",
    "HandlerService": "proxyman.command.HandlerService",
}


class StatsService:
    def __init__(self, stats: Optional[StatsManager]):
        self.counting = stats is not None  # a config without "stats" counts nothing
        self.stats = stats or StatsManager()
        self.started = time.monotonic()
        self.pauses = GcPauses()
        self.pauses.install()

    def close(self) -> None:
        self.pauses.remove()

    def methods(self) -> Dict[str, Method]:
        return {
            "GetStats": Method(stats_pb.GetStatsRequest, self.get_stats),
            "QueryStats": Method(stats_pb.QueryStatsRequest, self.query_stats),
            "GetSysStats": Method(stats_pb.SysStatsRequest, self.sys_stats),
        }

    def get_stats(self, request: Any) -> Any:
        counter = self.stats.get(request.name)
        if counter is None:
            # newError with the package's path object: Go prefixes the package path.
            raise V2SyncError(f"v2ray.com/core/app/stats/command: {request.name} not found.")
        value = counter.set(0) if request.reset else counter.value()
        return stats_pb.GetStatsResponse(stat=stats_pb.Stat(name=request.name, value=value))

    def query_stats(self, request: Any) -> Any:
        if not self.counting:
            raise V2SyncError(NO_STATS)
        found = self.stats.query(request.pattern, request.reset)
        return stats_pb.QueryStatsResponse(
            stat=[stats_pb.Stat(name=name, value=value) for name, value in found])

    def sys_stats(self, request: Any) -> Any:
        """The process's figures on Go's fields: threads for goroutines, RSS for memory,
        the cyclic collector's runs and time for the GC's. CPython counts no allocations
        and frees: Mallocs and Frees stay 0, LiveObjects is its allocated blocks."""
        rss = rss_bytes()
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss)
        return stats_pb.SysStatsResponse(
            NumGoroutine=threading.active_count(),
            NumGC=gc_collections(),
            Alloc=rss, TotalAlloc=peak, Sys=rss,
            LiveObjects=sys.getallocatedblocks(),
            PauseTotalNs=self.pauses.total_ns,
            Uptime=int(time.monotonic() - self.started))


class LoggerService:
    def methods(self) -> Dict[str, Method]:
        return {"RestartLogger": Method(log_pb.RestartLoggerRequest, self.restart)}

    def restart(self, request: Any) -> Any:
        """Reopen the log files (after logrotate moved them), as 4.34's RestartLogger."""
        try:
            reopen_files()
        except OSError as e:  # 4.34: "failed to start logger > open <path>: <reason>"
            raise V2SyncError(f"failed to start logger > {e}") from None
        log.info("api: log files reopened")
        return log_pb.RestartLoggerResponse()


class HandlerService:
    """User operations on inbounds, and removing handlers by tag (``Instance``)."""

    def __init__(self, instance: Any):
        self.instance = instance

    def methods(self) -> Dict[str, Method]:
        unsupported = ("only AlterInbound (AddUserOperation, RemoveUserOperation), "
                       "RemoveInbound and RemoveOutbound are supported by v2sync")
        return {
            "AlterInbound": Method(handler_pb.AlterInboundRequest, self.alter_inbound),
            "RemoveInbound": Method(handler_pb.RemoveInboundRequest, self.remove_inbound),
            "RemoveOutbound": Method(handler_pb.RemoveOutboundRequest, self.remove_outbound),
            "AddInbound": Method(handler_pb.AddInboundRequest, _refuse(
                "AddInbound (a whole protobuf handler config) is not implemented: "
                + unsupported)),
            "AddOutbound": Method(handler_pb.AddOutboundRequest, _refuse(
                "AddOutbound (a whole protobuf handler config) is not implemented: "
                + unsupported)),
            "AlterOutbound": Method(handler_pb.AlterOutboundRequest, self.alter_outbound),
        }

    def alter_inbound(self, request: Any) -> Any:
        """Errors worded as 4.34's, each with the Go package that makes it there."""
        operation = operation_of(request.operation)
        handler = self.instance.inbounds.get(request.tag) if request.tag else None
        if handler is None:
            raise V2SyncError(f"{COMMAND_PACKAGE}: failed to get handler: {request.tag} > "
                              f"{INBOUND_PACKAGE}: handler not found: {request.tag}")
        manager = handler.proxy
        if not isinstance(manager, UserManager):
            raise V2SyncError(f"{COMMAND_PACKAGE}: proxy is not a UserManager")
        package = USER_PACKAGES.get(manager.account_protocol, COMMAND_PACKAGE)
        if isinstance(operation, handler_pb.AddUserOperation):
            _add_user(manager, operation.user, package)
        else:
            _remove_user(manager, operation.email, package)
        return handler_pb.AlterInboundResponse()

    def remove_inbound(self, request: Any) -> Any:
        if not self.instance.remove_inbound(request.tag):
            raise V2SyncError(NO_CLUE)  # 4.34's answer for an empty or unknown tag
        return handler_pb.RemoveInboundResponse()

    def remove_outbound(self, request: Any) -> Any:
        if not self.instance.remove_outbound(request.tag):
            raise V2SyncError(NO_CLUE)  # an empty tag; an unknown one is no error (4.34)
        return handler_pb.RemoveOutboundResponse()

    def alter_outbound(self, request: Any) -> Any:
        """4.34 defines no outbound operation: every message it knows is "not an outbound
        operation" (a request without one makes 4.34 panic; here it is an unknown one)."""
        if known_message(request.operation.type):
            raise V2SyncError(f"{COMMAND_PACKAGE}: not an outbound operation")
        raise V2SyncError(f"{COMMAND_PACKAGE}: unknown operation > unknown type "
                          f"{request.operation.type!r} (4.34 defines no outbound operation)")


INBOUND_PACKAGE = "v2ray.com/core/app/proxyman/inbound"
# Where each protocol's AddUser and RemoveUser errors come from in 4.34.
USER_PACKAGES = {"vmess": "v2ray.com/core/proxy/vmess/inbound",
                 "vless": "v2ray.com/core/proxy/vless", "trojan": "v2ray.com/core/proxy/trojan"}


def _add_user(manager: UserManager, user: Any, package: str) -> None:
    """4.34: the user is parsed first ("failed to parse user > ..."), then the proxy's
    AddUser says whether its email is taken, in its own words."""
    try:
        manager.add_user(client_entry(user, manager.account_protocol))
    except UserExists as e:
        raise V2SyncError(f"{package}: User {e.email} already exists.") from None
    except ConfigError as e:
        raise V2SyncError(f"{COMMAND_PACKAGE}: failed to parse user > {e.message}") from None
    except V2SyncError as e:
        raise V2SyncError(f"{COMMAND_PACKAGE}: failed to parse user > {e}") from None


def _remove_user(manager: UserManager, email: str, package: str) -> None:
    if not email:
        raise V2SyncError(f"{package}: Email must not be empty.")
    try:
        manager.remove_user(email)
    except UserNotFound:
        raise V2SyncError(f"{package}: User {email} not found.") from None


def _refuse(message: str) -> Callable[[Any], Any]:
    def handler(request: Any) -> Any:
        raise GrpcError(Status.UNIMPLEMENTED, message)
    return handler


def service_methods(services: Mapping[str, Any], packages: Iterable[str] = PACKAGES
                    ) -> Dict[str, Method]:
    """``/package.Service/Method`` -> Method for each enabled service, under each name."""
    table: Dict[str, Method] = {}
    for name, service in services.items():
        for method_name, method in service.methods().items():
            for package in packages:
                table[f"/{package}.{SERVICE_PATHS[name]}/{method_name}"] = method
    return table
