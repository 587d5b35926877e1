"""The transport layer as handlers see it (v2ray ``transport/internet/{dialer,tcp_hub}.go``).

Each network (``tcp``, ``websocket``, ``domainsocket``) registers a ``Transport`` in
``common.registry.TRANSPORTS``. A handler builds one ``StreamServer`` (inbound) or
``StreamClient`` (outbound) from its ``streamSettings``; proxies never open sockets, they
get connections from these. TLS contexts are built here, once per handler.
"""
from __future__ import annotations

import abc
import socket
import time
from typing import Any, Callable, Optional, Sequence, Tuple

from v2sync.common.errors import ConfigError, TransportError, join_path
from v2sync.common.net import Address, Destination
from v2sync.common.registry import TRANSPORTS
from v2sync.transport.internet.config import SockoptSettings, StreamSettings
from v2sync.transport.internet.conn import Connection, Handshake, complete
from v2sync.transport.internet.proxyproto import accept_proxy_header
from v2sync.transport.internet.counting import counted
from v2sync.transport.internet.tls import DEFAULT_ALPN, ClientTls, ServerTls

DEFAULT_STREAM = StreamSettings()
Listening = Tuple[socket.socket, Callable[[], None]]  # a bound socket, and its cleanup


class Transport(abc.ABC):
    """What a network implements. ``accept`` and ``dial`` add the network's own layers
    (TLS first, then e.g. the HTTP header or WebSocket framing) to a raw connection."""

    # 4.34's ALPN when tlsSettings.alpn is unset (``WithNextProto`` per transport).
    server_alpn: Sequence[str] = DEFAULT_ALPN
    client_alpn: Sequence[str] = DEFAULT_ALPN
    # Whether dial needs the destination's address (domain sockets ignore it).
    uses_address = True
    # Whether a failed server handshake is the proxy's to report (a rejected line): 4.34
    # runs TLS, the PROXY header and the tcp header inside the proxy's first read, but
    # WebSocket's upgrade (and the TLS under it) in net/http's server, before any proxy.
    handshake_in_proxy = True

    @abc.abstractmethod
    def listen(self, address: Address, port: int, settings: StreamSettings) -> Listening:
        """A bound, listening socket for ``address:port`` and what to do once it closes."""

    @abc.abstractmethod
    def accept_steps(self, conn: Connection, settings: StreamSettings,
                     tls: Optional[ServerTls], deadline: float) -> Handshake[Connection]:
        """The connection after this transport's server handshake (TLS, header, ...), as
        handshake steps: while parked in the selector they yield the deadline to wait for."""

    def accept(self, conn: Connection, settings: StreamSettings, tls: Optional[ServerTls],
               deadline: float) -> Connection:
        """``accept_steps`` on a blocking connection."""
        return complete(self.accept_steps(conn, settings, tls, deadline))

    @abc.abstractmethod
    def dial(self, target: Destination, ip_dest: Destination, settings: StreamSettings,
             tls: Optional[ClientTls], timeout: float, source: Optional[Address]) -> Connection:
        """A connection to ``ip_dest`` with this transport's client handshake done."""

    def accept_deadline(self, handshake_timeout: float) -> float:
        """When an accepted connection's transport handshake must be done."""
        return time.monotonic() + handshake_timeout


def _transport(settings: StreamSettings) -> Transport:
    return TRANSPORTS.get(settings.network, "streamSettings.network")


class StreamServer:
    """An inbound's transport: listens, and upgrades each accepted connection."""

    def __init__(self, settings: Optional[StreamSettings], handshake_timeout: float):
        self.settings = settings or DEFAULT_STREAM
        self.transport = _transport(self.settings)
        self.handshake_timeout = handshake_timeout
        self.tls = (ServerTls(self.settings.tls, self.transport.server_alpn)
                    if self.settings.tls is not None else None)

    @property
    def handshake_in_proxy(self) -> bool:
        return self.transport.handshake_in_proxy

    @property
    def single_listener(self) -> bool:
        """A domain socket is one path, whatever the inbound's port range says."""
        return not self.transport.uses_address

    def listen(self, address: Address, port: int) -> Listening:
        return self.transport.listen(address, port, self.settings)

    def accept(self, conn: Connection) -> Connection:
        return complete(self.accept_steps(conn))

    def accept_steps(self, conn: Connection) -> Handshake[Connection]:
        deadline = self.transport.accept_deadline(self.handshake_timeout)
        if self.settings.accept_proxy_protocol:
            conn = yield from accept_proxy_header(conn, deadline)
        return (yield from self.transport.accept_steps(conn, self.settings, self.tls, deadline))


class StreamClient:
    """An outbound's transport: dials a destination through the configured layers."""

    def __init__(self, settings: Optional[StreamSettings] = None,
                 source: Optional[Address] = None):
        self.settings = settings or DEFAULT_STREAM
        self.transport = _transport(self.settings)
        self.source = source
        self.tls = (ClientTls(self.settings.tls, self.transport.client_alpn)
                    if self.settings.tls is not None else None)
        # (uplink, downlink) counters of the outbound (``app.stats``); None: not counted.
        self.counters: Tuple[Any, Any] = (None, None)
        # ``proxySettings``: another outbound carries the connections (app.proxyman.chain).
        self.chain: Any = None
        self._chain_tls: Optional[ClientTls] = None

    def carry_through(self, chain: Any) -> None:
        """Dial through ``chain`` (a ``ChainDialer``). TLS still applies, as 4.34's
        ``GetTLSConfig`` makes it (Go's default ALPN, not the transport's); the transport
        layers do not."""
        self.chain = chain
        if self.settings.tls is not None:
            self._chain_tls = ClientTls(self.settings.tls)

    @classmethod
    def for_handler(cls, handler_config) -> "StreamClient":
        """From an OutboundConfig (``streamSettings`` and ``sendThrough``); None: plain TCP."""
        stream = getattr(handler_config, "stream", None)
        via = getattr(handler_config, "send_through", None)
        try:
            return cls(getattr(stream, "transport", None), Address.parse(via) if via else None)
        except TransportError as e:  # e.g. an unreadable CA bundle
            path = join_path(getattr(handler_config, "path", ""), "streamSettings")
            raise ConfigError(str(e), path) from e

    @property
    def sockopt(self) -> SockoptSettings:
        """For the outbound's own UDP sockets (``udp.open_udp``/``dial_udp``)."""
        return self.settings.sockopt

    @property
    def uses_address(self) -> bool:
        return self.transport.uses_address

    def chained_datagrams(self, dest: Destination) -> Any:
        """A UDP socket's stand-in carried by the ``proxySettings`` outbound
        (``chain.CarriedDatagrams``), to ``dest`` as given; None without one."""
        return None if self.chain is None else self.chain.datagrams(dest)

    def dial_chained(self, target: Destination, timeout: float) -> Optional[Connection]:
        """Through the carrying outbound, ``target`` unresolved (it resolves, or its proxy
        does); None without ``proxySettings`` or when no outbound has its tag."""
        if self.chain is None:
            return None
        conn = self.chain.dial(target)
        if conn is None:
            return None
        try:
            if self._chain_tls is not None:
                conn = self._chain_tls.wrap(conn, target, time.monotonic() + timeout)
        except BaseException:
            conn.close()
            raise
        uplink, downlink = self.counters
        return counted(conn, read_counter=downlink, write_counter=uplink)

    def dial(self, target: Destination, ip_dest: Destination, timeout: float) -> Connection:
        """``target`` as configured (its domain names TLS and the WebSocket Host);
        ``ip_dest`` the resolved address actually connected to."""
        conn = self.transport.dial(target, ip_dest, self.settings, self.tls, timeout,
                                   self.source)
        uplink, downlink = self.counters
        return counted(conn, read_counter=downlink, write_counter=uplink)
