"""TCP listening and dialing (v2ray ``transport/internet/tcp``).

A bound listening socket goes to the Instance's ``HandshakeSelector`` (``handshakes.py``),
which accepts on it and parks each connection until its handshake is complete.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Optional

from v2sync.common.errors import TransportError
from v2sync.common.net import Address, AddressKind, Destination
from v2sync.common.registry import TRANSPORTS
from v2sync.common.task import outside_slot
from v2sync.transport.internet.config import SockoptSettings, StreamSettings
from v2sync.transport.internet.conn import Connection, Handshake, new_socket
from v2sync.transport.internet.headers.conn import HeaderClientConnection, accept_http_header
from v2sync.transport.internet.hub import Listening, Transport
from v2sync.transport.internet.sockopt import NO_SOCKOPT, apply_inbound, apply_outbound, dual_stack
from v2sync.transport.internet.tls import ClientTls, ServerTls

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024


def set_nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (e.g. a unix socket): nothing to tune


def _family(address: Address) -> socket.AddressFamily:
    return socket.AF_INET6 if address.kind is AddressKind.IPV6 else socket.AF_INET


def bind_tcp(address: Address, port: int, opt: SockoptSettings = NO_SOCKOPT) -> socket.socket:
    if opt.tproxy == "off":  # a transparent listener keeps its family (SO_ORIGINAL_DST)
        address = dual_stack(address)
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    try:
        apply_inbound(sock, opt)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if address.kind is AddressKind.IPV6 and address.value == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" serves v4 too
        sock.bind((address.value, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        raise TransportError(f"failed to listen on {address}:{port}: {e.strerror or e}") from e
    except TransportError:
        sock.close()
        raise
    return sock


# A unix-socket peer has no address; v2ray names it by the (empty) socket name.
UNIX_PEER = Destination(Address("@", AddressKind.DOMAIN), 0)


def dial_tcp(dest: Destination, timeout: float, source: Optional[Address] = None,
             opt: SockoptSettings = NO_SOCKOPT) -> Connection:
    """Connect to an IP destination (resolve names before calling). TCP_NODELAY is set."""
    if not dest.address.is_ip:
        raise TransportError(f"dial_tcp needs an IP address, got {dest.address}")
    sock = new_socket(_family(dest.address), socket.SOCK_STREAM, f"failed to dial {dest}")
    try:
        apply_outbound(sock, opt)
        if source is not None:
            sock.bind((source.value, 0))
        sock.settimeout(timeout)
        outside_slot(sock.connect, (dest.address.value, dest.port))
    except OSError as e:
        sock.close()
        raise TransportError(f"failed to dial {dest}: {e.strerror or e}") from e
    except TransportError:
        sock.close()
        raise
    set_nodelay(sock)
    return Connection(sock, dest)


class TcpTransport(Transport):
    """``network: "tcp"``: TLS first, then the optional HTTP header (tcp/hub.go, dialer.go)."""

    server_alpn = ("h2",)  # tcp/hub.go: GetTLSConfig(WithNextProto("h2")); 4.35 changed it

    def listen(self, address: Address, port: int, settings: StreamSettings) -> Listening:
        return listen_tcp(address, port, settings)

    def accept_steps(self, conn: Connection, settings: StreamSettings,
                     tls: Optional[ServerTls], deadline: float) -> Handshake[Connection]:
        if tls is not None:
            conn = yield from tls.wrap_steps(conn, deadline)
        if settings.tcp_header is not None:
            conn = yield from accept_http_header(conn, settings.tcp_header, deadline)
        return conn

    def dial(self, target: Destination, ip_dest: Destination, settings: StreamSettings,
             tls: Optional[ClientTls], timeout: float, source: Optional[Address]) -> Connection:
        conn = dial_tcp(ip_dest, timeout, source, settings.sockopt)
        try:
            if tls is not None:
                conn = tls.wrap(conn, target, time.monotonic() + timeout)
        except BaseException:
            conn.close()
            raise
        if settings.tcp_header is not None:
            conn = HeaderClientConnection(conn, settings.tcp_header)
        return conn


def listen_tcp(address: Address, port: int, settings: StreamSettings) -> Listening:
    """A TCP listening socket; it leaves nothing behind to clean up."""
    return bind_tcp(address, port, settings.sockopt), no_cleanup


def no_cleanup() -> None:
    """Nothing to do once a TCP listener closes."""


TRANSPORTS.add("tcp", TcpTransport())
