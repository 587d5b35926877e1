"""Inbound handlers and their manager (v2ray ``app/proxyman/inbound/always.go``).

A handler opens one TCP listener per port of its range when its proxy serves TCP, and a
UDP socket per port when it serves UDP: SOCKS's relay (``wants_udp``, datagrams handed to
``process_datagram``) or, for a proxy whose ``networks`` include UDP, a ``UdpWorker``
(``udp_worker.py``: one packet connection per source, handed to ``process``). An accepted
connection's handshakes (the transport's, then the proxy's ``handshake`` steps) run parked
in the Instance's one ``HandshakeSelector``; what the proxy returns for the rest (dispatch,
relay) runs in a worker thread. Live connections are remembered so shutdown can abort them.
"""
from __future__ import annotations

import logging
import socket
import threading
import types
from dataclasses import replace
from typing import Any, Callable, Collection, Dict, List, Optional, Tuple

from v2sync.app.log.access import AccessLog
from v2sync.app.stats.manager import Counter
from v2sync.common.errors import (ConfigError, HandshakeClosed, HandshakeTimeout, ProtocolError,
                                  TransportError, V2SyncError)
from v2sync.common.net import ANY_IPV6, Address, Network
from v2sync.common.session import Session
from v2sync.common.task import Steps as TaskSteps
from v2sync.common.task import ThreadGroup, drive
from v2sync.features.routing import Dispatcher
from v2sync.infra.conf.model import InboundConfig
from v2sync.app.proxyman.udp_worker import UdpWorker
from v2sync.transport.internet.config import StreamSettings
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.counting import counted
from v2sync.transport.internet.handshakes import Handoff, HandshakeSelector, Steps
from v2sync.transport.internet.hub import StreamServer
from v2sync.transport.internet.tcp import UNIX_PEER, set_nodelay
from v2sync.transport.internet.tproxy import (TPROXY_OFF, TPROXY_REDIRECT,
                                              is_self, original_tcp_destination)
from v2sync.transport.internet.udp import UdpListener, bind_udp

log = logging.getLogger(__name__)

# Closing waits this long for the selector's thread to close what it holds.
SELECTOR_CLOSE_WAIT = 2.0
# How long a handler waits for the selector to close one of its listeners (it normally
# takes a wake-up: well under a millisecond).
LISTENER_CLOSE_WAIT = 1.0
# Port 0 with UDP: how many kernel-picked TCP ports to try for one whose UDP twin is free.
PORT_ZERO_ATTEMPTS = 20


class InboundHandler:
    def __init__(self, config: InboundConfig, proxy, dispatcher: Dispatcher,
                 workers: ThreadGroup, handshake_timeout: float = 60.0):
        self.tag = config.tag
        self.config = config
        self.proxy = proxy
        self.dispatcher = dispatcher
        self.workers = workers
        self.access_log = AccessLog()
        # No "listen": all interfaces; "::" with V6ONLY off also serves IPv4.
        self.address = Address.parse(config.listen) if config.listen else ANY_IPV6
        # The transport (TLS, WebSocket, ...) handshake runs under the level-0 handshake
        # timeout, as 4.34's proxies read it under that deadline.
        self.follow_redirect = bool(getattr(proxy, "follow_redirect", False))
        self.stream = _with_redirect(config.stream.transport, self.follow_redirect)
        self.tproxy_mode = self.stream.sockopt.tproxy if self.stream is not None else TPROXY_OFF
        try:
            self.server = StreamServer(self.stream, handshake_timeout)
        except TransportError as e:
            raise ConfigError(str(e), f"{config.path}.streamSettings", config.file) from e
        self.listening: List[Tuple[socket.socket, int, Callable[[], None]]] = []
        self.udp_listeners: List[UdpListener | UdpWorker] = []
        self._selector: Optional[HandshakeSelector] = None
        self._live: Dict[int, Connection] = {}
        self._lock = threading.Lock()
        # (uplink, downlink) counters (``app.stats``), set by the Instance; None: not counted.
        self.counters: Tuple[Any, Any] = (None, None)
        self.handshake_failures = Counter()  # for the metrics endpoint
        # Fixed per handler, read by every connection's handshake: how the access line names
        # the source, and whether a failed transport handshake is the proxy's to report (4.34
        # runs TLS and a PROXY header inside the proxy's first read, WebSocket before it).
        self.source_with_network = bool(getattr(proxy, "source_with_network", False))
        self.transport_failures_logged = (self.server.handshake_in_proxy
                                          and getattr(proxy, "logs_transport_failures", True))

    def bind(self) -> None:
        """Open every port; nothing accepts until ``start`` (a bind failure starts nothing)."""
        for port in self.config.ports:
            if port == 0:
                self._bind_port_zero()
            else:
                self._bind_port(port)
            if self.server.single_listener:
                break  # one socket path, whatever the port range says

    def _bind_port_zero(self) -> None:
        """Port 0 with UDP: the kernel picks the TCP port, and the UDP port of that number
        may be any socket's (UDP clients autobind in the same range). Pick again, holding
        each refused TCP port meanwhile so the kernel picks another, then let them go."""
        refused: List[Tuple[socket.socket, int, Callable[[], None]]] = []
        try:
            for attempt in range(1, PORT_ZERO_ATTEMPTS + 1):
                opened = len(self.listening)
                try:
                    return self._bind_port(0)
                except TransportError:
                    if attempt == PORT_ZERO_ATTEMPTS or len(self.listening) <= opened:
                        raise
                    refused.append(self.listening.pop())
        finally:
            for sock, _, cleanup in refused:
                sock.close()
                cleanup()

    def _bind_port(self, port: int) -> None:
        networks = getattr(self.proxy, "networks", (Network.TCP,))
        bound = port
        if Network.TCP in networks:
            sock, cleanup = self.server.listen(self.address, port)
            bound = 0 if sock.family == socket.AF_UNIX else sock.getsockname()[1]
            self.listening.append((sock, bound, cleanup))
        if getattr(self.proxy, "wants_udp", False):
            self.udp_listeners.append(self._open_udp(bound or port, self._name()))
        elif Network.UDP in networks:
            self.udp_listeners.append(self._open_udp_worker(bound or port))

    def _name(self) -> str:
        return self.tag or self.config.protocol

    def held(self) -> List[Tuple[int, Network]]:
        """The ports this handler has bound, with their network."""
        return ([(port, Network.TCP) for _, port, _ in self.listening]
                + [(listener.port, Network.UDP) for listener in self.udp_listeners])

    def check_free(self, held: Collection[Tuple[int, Network]]) -> None:
        """Before a reload touches the running listeners: each port this handler would bind
        and ``held`` (the running ones) does not is bound and let go at once; TransportError
        names the first one that cannot be. A domain socket or port 0 is not checked."""
        if self.server.single_listener:
            return
        networks = getattr(self.proxy, "networks", (Network.TCP,))
        udp = getattr(self.proxy, "wants_udp", False) or Network.UDP in networks
        for port in (p for p in self.config.ports if p):
            if Network.TCP in networks and (port, Network.TCP) not in held:
                sock, cleanup = self.server.listen(self.address, port)
                sock.close()
                cleanup()
            if udp and (port, Network.UDP) not in held:
                mark = self.stream.sockopt.mark if self.stream is not None else 0
                bind_udp(self.address, port, mark, self.tproxy_mode != TPROXY_OFF).close()

    def start(self, listener_group: ThreadGroup, selector: HandshakeSelector) -> None:
        self._selector = selector
        for sock, _, cleanup in self.listening:
            selector.add_listener(sock, self._start_connection, self._name(), cleanup)
        for listener in self.udp_listeners:
            listener.start(listener_group)

    def unbind(self) -> None:
        """Close listeners that were bound but never started (a later bind failed)."""
        for sock, _, cleanup in self.listening:
            sock.close()
            cleanup()
        for listener in self.udp_listeners:
            listener.close_unstarted()

    def _open_udp(self, port: int, name: str) -> UdpListener:
        # The proxy answers through the same socket the datagram arrived on. Datagrams
        # count on the inbound's counters whole, as 4.34's udpWorker counts them.
        uplink, downlink = self.counters

        def send(data: bytes, dest) -> None:
            listener.send_to(data, dest)
            if downlink is not None:
                downlink.add(len(data))

        def received(data: bytes, source) -> None:
            if uplink is not None:
                uplink.add(len(data))
            self.proxy.process_datagram(self, data, source, send)

        listener = UdpListener(self.address, port, received, name)
        return listener

    def _open_udp_worker(self, port: int) -> UdpWorker:
        # A bind failure (TransportError) leaves what is bound to unbind(), as TCP's does.
        return UdpWorker(self.proxy, self.dispatcher, self.workers, self.address, port,
                         self.tag, self.stream.sockopt if self.stream else None,
                         self.follow_redirect, self.counters)

    # -- one connection: handshake parked in the selector, then served by a thread -------
    def _start_connection(self, sock: socket.socket) -> Optional[Steps]:
        set_nodelay(sock)
        try:
            conn = Connection(sock, UNIX_PEER if sock.family == socket.AF_UNIX else None)
        except OSError:  # the peer is already gone (getpeername fails)
            sock.close()
            return None
        return self._handshake(conn)

    def _handshake(self, conn: Connection) -> Steps:
        """The transport's and the proxy's handshakes; what remains goes to a thread."""
        session = Session(inbound_tag=self.tag, source=conn.remote, sniffing=self.config.sniffing,
                          source_with_network=self.source_with_network)
        if self.follow_redirect:
            self._find_original_target(session, conn)
        with self._lock:
            self._live[id(conn)] = conn  # the raw connection: aborting it stops every layer
        upgraded = None
        handed_off = False
        in_proxy = self.transport_failures_logged  # past the transport, always the proxy's
        try:
            upgraded = yield from self.server.accept_steps(conn)
            session.source = upgraded.remote  # e.g. WebSocket's X-Forwarded-For
            # 4.34 counts above TLS/WebSocket, the proxy protocol's bytes (worker.go).
            upgraded = counted(upgraded, *self.counters)
            in_proxy = True
            serve = yield from self.proxy.handshake(session, upgraded, self.dispatcher)
            if serve is None:
                return None  # the proxy is done (the client left before asking anything)
            handed_off = True
            return _Accepted(self, session, conn, upgraded, serve)
        except V2SyncError as e:
            self.handshake_failures.add(1)
            self._report(session, conn, e)
            if in_proxy and _logs_rejected(self.proxy, e):
                self.access_log.rejected(session, str(e))
            return None
        finally:
            if not handed_off:
                self._finish(conn, upgraded)

    def _find_original_target(self, session: Session, conn: Connection) -> None:
        """Where the client was going before REDIRECT/TPROXY (4.34 tcpWorker.callback);
        a failure is logged and the proxy decides without it."""
        try:
            target = original_tcp_destination(conn.sock, self.tproxy_mode)
        except TransportError as e:
            log.info("%s: %s", session.name(), e)
            return
        if target is not None and is_self(target, [port for _, port, _ in self.listening]):
            log.info("%s: %s was going to this inbound itself; not followed", session.name(),
                     conn.remote)
            return
        session.original_target = target

    def _report(self, session: Session, conn: Connection, e: V2SyncError) -> None:
        if isinstance(e, HandshakeTimeout):
            log.info("%s: handshake with %s timed out", session.name(), conn.remote)
        elif isinstance(e, (ProtocolError, TransportError)):
            log.info("%s: connection from %s ended: %s", session.name(), conn.remote, e)
        else:
            log.warning("%s: %s", session.name(), e)

    def _finish(self, conn: Connection, upgraded: Optional[Connection]) -> None:
        # Each layer says goodbye (TLS close_notify), then the socket.
        (upgraded or conn).close()
        conn.close()
        with self._lock:
            self._live.pop(id(conn), None)

    def ports(self) -> List[int]:
        """The TCP ports, or for a UDP-only inbound its UDP ports."""
        return [port for _, port, _ in self.listening] or \
            [listener.port for listener in self.udp_listeners]

    def udp_sessions(self) -> int:
        """Live UDP sources of this inbound's UDP workers."""
        return sum(listener.session_count() for listener in self.udp_listeners
                   if isinstance(listener, UdpWorker))

    def stop_listening(self) -> None:
        if self._selector is not None:
            for sock, _, _ in self.listening:
                self._selector.remove_listener(sock, LISTENER_CLOSE_WAIT)
        for listener in self.udp_listeners:
            listener.close()

    def abort_connections(self) -> int:
        with self._lock:
            live = list(self._live.values())
        for conn in live:
            conn.abort()
        self.close_proxy()
        return len(live)

    def close_proxy(self) -> None:
        """What the proxy holds beyond its connections (the SOCKS UDP relay's sessions)."""
        close = getattr(self.proxy, "close", None)
        if close is not None:
            close()

    def live_count(self) -> int:
        with self._lock:
            return len(self._live)


def _with_redirect(stream: Optional[StreamSettings],
                   follow_redirect: bool) -> Optional[StreamSettings]:
    """followRedirect without a tproxy mode means "redirect" (4.34 always.go)."""
    if not follow_redirect:
        return stream
    stream = stream or StreamSettings()
    if stream.sockopt.tproxy != TPROXY_OFF:
        return stream
    return replace(stream, sockopt=replace(stream.sockopt, tproxy=TPROXY_REDIRECT))


class _Accepted(Handoff):
    """A connection past its handshakes; ``serve`` (dispatch, relay) runs in a thread."""

    __slots__ = ("handler", "session", "conn", "upgraded", "rest")

    def __init__(self, handler: InboundHandler, session: Session, conn: Connection,
                 upgraded: Connection, rest: Callable[[], object]):
        self.handler = handler
        self.session = session
        self.conn = conn
        self.upgraded = upgraded
        self.rest = rest

    def serve(self) -> None:
        drive(self.serve_steps())

    def serve_steps(self) -> TaskSteps[None]:
        """The proxy's rest; a rest written as steps (a generator) parks while idle."""
        try:
            rest = self.rest()
            if isinstance(rest, types.GeneratorType):
                yield from rest
        except V2SyncError as e:
            self.handler._report(self.session, self.conn, e)
        finally:
            self.handler._finish(self.conn, self.upgraded)

    def drop(self) -> None:
        log.warning("%s: no thread to serve %s; closed", self.session.name(), self.conn.remote)
        self.handler._finish(self.conn, self.upgraded)


class InboundManager:
    def __init__(self) -> None:
        self.handlers: List[InboundHandler] = []
        # Taken out by the API while connections were live: a shutdown still ends those.
        self.removed: List[InboundHandler] = []
        self.selector: Optional[HandshakeSelector] = None

    def add(self, handler: InboundHandler) -> None:
        self.handlers.append(handler)

    def get(self, tag: str) -> Optional[InboundHandler]:
        return next((h for h in self.handlers if h.tag == tag), None)

    def remove(self, tag: str) -> Optional[InboundHandler]:
        """Take a running handler out (the API's RemoveInbound): its listeners close, its
        live connections go on. None when no handler has ``tag``."""
        handler = self.get(tag)
        if handler is not None:
            self.handlers.remove(handler)
            handler.stop_listening()
            self.removed = [h for h in self.removed if h.live_count()] + [handler]
        return handler

    def start(self, listener_group: ThreadGroup) -> None:
        """Bind all handlers' ports, then start them all: all or nothing. Their listeners
        and unfinished handshakes share one selector (``handshakes.py``)."""
        try:
            for handler in self.handlers:
                handler.bind()
        except V2SyncError:
            for handler in self.handlers:
                handler.unbind()
            raise
        if not self.handlers:
            return
        self.selector = HandshakeSelector(self.handlers[0].workers)
        for handler in self.handlers:
            handler.start(listener_group, self.selector)
        self.selector.start()

    def held(self) -> List[Tuple[int, Network]]:
        return [pair for handler in self.handlers for pair in handler.held()]

    def check_free(self, held: Collection[Tuple[int, Network]]) -> None:
        for handler in self.handlers:
            handler.check_free(held)

    def stop_listening(self) -> None:
        """Close every listener and every unfinished handshake."""
        for handler in self.handlers:
            handler.stop_listening()
        if self.selector is not None:
            self.selector.close()
            self.selector.wait_closed(SELECTOR_CLOSE_WAIT)

    def abort_connections(self) -> int:
        return sum(handler.abort_connections() for handler in self.handlers + self.removed)

    def live_count(self) -> int:
        return sum(handler.live_count() for handler in self.handlers + self.removed)


def _logs_rejected(proxy: object, error: V2SyncError) -> bool:
    """Whether 4.34's server writes a rejected line for this failure: those that write any
    (``logs_rejected``), except, where the server skips io.EOF (VMess, VLESS, Trojan:
    ``logs_empty_close`` False), a client that closed without sending a byte."""
    if not getattr(proxy, "logs_rejected", False):
        return False
    silent = isinstance(error, HandshakeClosed) and error.empty
    return not silent or getattr(proxy, "logs_empty_close", True)
