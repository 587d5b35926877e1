"""Inbound handlers and their manager (v2ray ``app/proxyman/inbound/always.go``).

A handler opens one TCP listener per port of its range (and a UDP listener per port when
its proxy asks for UDP), runs the proxy on each accepted connection in that connection's
worker thread, and remembers live connections so shutdown can abort them.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict, List, Optional

from v2sync.common.errors import (ConfigError, HandshakeTimeout, ProtocolError, TransportError,
                                  V2SyncError)
from v2sync.common.net import ANY_IPV6, Address
from v2sync.common.session import Session
from v2sync.common.task import ThreadGroup
from v2sync.features.routing import Dispatcher
from v2sync.infra.conf.model import InboundConfig
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.hub import StreamServer
from v2sync.transport.internet.tcp import StreamListener
from v2sync.transport.internet.udp import UdpListener

log = logging.getLogger(__name__)


class InboundHandler:
    def __init__(self, config: InboundConfig, proxy, dispatcher: Dispatcher,
                 workers: ThreadGroup, handshake_timeout: float = 60.0):
        self.tag = config.tag
        self.config = config
        self.proxy = proxy
        self.dispatcher = dispatcher
        self.workers = workers
        # No "listen": all interfaces; "::" with V6ONLY off also serves IPv4.
        self.address = Address.parse(config.listen) if config.listen else ANY_IPV6
        # The transport (TLS, WebSocket, ...) handshake runs under the level-0 handshake
        # timeout, as 4.34's proxies read it under that deadline.
        try:
            self.server = StreamServer(config.stream.transport, handshake_timeout)
        except TransportError as e:
            raise ConfigError(str(e), f"{config.path}.streamSettings", config.file) from e
        self.listeners: List[StreamListener] = []
        self.udp_listeners: List[UdpListener] = []
        self._live: Dict[int, Connection] = {}
        self._lock = threading.Lock()

    def bind(self) -> None:
        """Open every port; nothing accepts until ``start`` (a bind failure starts nothing)."""
        name = self.tag or self.config.protocol
        for port in self.config.ports:
            sock, cleanup = self.server.listen(self.address, port)
            self.listeners.append(StreamListener(sock, self._handle, self.workers, name, cleanup))
            if getattr(self.proxy, "wants_udp", False):
                self.udp_listeners.append(self._open_udp(self.listeners[-1].port or port, name))
            if self.server.single_listener:
                break  # one socket path, whatever the port range says

    def start(self, listener_group: ThreadGroup) -> None:
        for listener in [*self.listeners, *self.udp_listeners]:
            listener.start(listener_group)

    def unbind(self) -> None:
        """Close listeners that were bound but never started (a later bind failed)."""
        for listener in [*self.listeners, *self.udp_listeners]:
            listener.close_unstarted()

    def _open_udp(self, port: int, name: str) -> UdpListener:
        # The proxy answers through the same socket the datagram arrived on.
        listener = UdpListener(
            self.address, port,
            lambda data, source: self.proxy.process_datagram(self, data, source, listener.send_to),
            name)
        return listener

    def _handle(self, conn: Connection) -> None:
        session = Session(inbound_tag=self.tag, source=conn.remote, sniffing=self.config.sniffing)
        with self._lock:
            self._live[id(conn)] = conn  # the raw connection: aborting it stops every layer
        upgraded = None
        try:
            upgraded = self.server.accept(conn)
            session.source = upgraded.remote  # e.g. WebSocket's X-Forwarded-For
            self.proxy.process(session, upgraded, self.dispatcher)
        except HandshakeTimeout as e:
            log.info("%s: %s", session.name(), e)
        except (ProtocolError, TransportError) as e:
            log.info("%s: connection from %s ended: %s", session.name(), conn.remote, e)
        except V2SyncError as e:
            log.warning("%s: %s", session.name(), e)
        finally:
            if upgraded is not None:
                upgraded.close()  # each layer says goodbye (TLS close_notify), then the socket
            with self._lock:
                self._live.pop(id(conn), None)

    def ports(self) -> List[int]:
        return [listener.port for listener in self.listeners]

    def stop_listening(self) -> None:
        for listener in [*self.listeners, *self.udp_listeners]:
            listener.close()

    def abort_connections(self) -> int:
        with self._lock:
            live = list(self._live.values())
        for conn in live:
            conn.abort()
        close = getattr(self.proxy, "close", None)
        if close is not None:
            close()
        return len(live)

    def live_count(self) -> int:
        with self._lock:
            return len(self._live)


class InboundManager:
    def __init__(self) -> None:
        self.handlers: List[InboundHandler] = []

    def add(self, handler: InboundHandler) -> None:
        self.handlers.append(handler)

    def get(self, tag: str) -> Optional[InboundHandler]:
        return next((h for h in self.handlers if h.tag == tag), None)

    def start(self, listener_group: ThreadGroup) -> None:
        """Bind all handlers' ports, then start them all: all or nothing."""
        try:
            for handler in self.handlers:
                handler.bind()
        except V2SyncError:
            for handler in self.handlers:
                handler.unbind()
            raise
        for handler in self.handlers:
            handler.start(listener_group)

    def stop_listening(self) -> None:
        for handler in self.handlers:
            handler.stop_listening()

    def abort_connections(self) -> int:
        return sum(handler.abort_connections() for handler in self.handlers)

    def live_count(self) -> int:
        return sum(handler.live_count() for handler in self.handlers)
