"""The commander's virtual outbound (v2ray ``app/commander/outbound.go``) and its setup.

Routing sends the API inbound's connections to ``api.tag``; this outbound serves each as
one gRPC-over-h2c connection on the link's pipes, in the outbound's thread. A read waits
at most the level-0 ``connIdle``: an idle API client is closed like an idle proxy client.
"""
from __future__ import annotations

import logging
from typing import Any, Dict

from v2sync.app.commander.grpc import GrpcServer
from v2sync.app.commander.services import (HandlerService, LoggerService, StatsService,
                                           service_methods)
from v2sync.common.errors import TransportError, V2SyncError
from v2sync.common.session import Session
from v2sync.infra.conf.model import ApiConfig
from v2sync.transport.link import Link
from v2sync.transport.pipe import ReadTimeout

log = logging.getLogger(__name__)


class PipeStream:
    """The outbound end of a link as a byte stream."""

    def __init__(self, link: Link, idle: float):
        self.link = link
        self.idle = idle

    def read(self) -> bytes:
        try:
            chunk = self.link.reader.read(timeout=self.idle)
        except ReadTimeout as e:
            raise TransportError(f"api: no request for {self.idle:g} s") from e
        return chunk if isinstance(chunk, bytes) else b""  # b"": EOF

    def write(self, data: bytes) -> None:
        self.link.writer.write(data)


class Commander:
    """The enabled services and the server; ``outbound`` is what routing reaches."""

    def __init__(self, config: ApiConfig, instance: Any):
        self.tag = config.tag
        self.services: Dict[str, Any] = {}
        for name in config.services:
            if name == "StatsService":
                self.services[name] = StatsService(instance.stats)
            elif name == "LoggerService":
                self.services[name] = LoggerService()
            elif name == "HandlerService":
                self.services[name] = HandlerService(instance)
        self.server = GrpcServer(service_methods(self.services))
        self.outbound = CommanderOutbound(self.server, instance.policy.for_level(0).conn_idle)

    def close(self) -> None:
        stats = self.services.get("StatsService")
        if stats is not None:
            stats.close()


class CommanderOutbound:
    def __init__(self, server: GrpcServer, idle: float):
        self.server = server
        self.idle = idle

    def process(self, session: Session, link: Link) -> None:
        try:
            self.server.serve(PipeStream(link, self.idle))
        except V2SyncError as e:
            log.info("%s: api connection ended: %s", session.name(), e)
