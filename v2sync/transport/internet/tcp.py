"""TCP listening and dialing (v2ray ``transport/internet/tcp``).

``TcpListener`` is shaped like CPython's ``socketserver.ThreadingTCPServer``: a thread per
connection, every thread tracked so shutdown can join it, accept() polled with a timeout so
``close()`` is noticed within ``POLL_INTERVAL``.
"""
from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from typing import Callable, Optional

from v2sync.common.errors import TransportError
from v2sync.common.net import Address, AddressKind, Destination
from v2sync.common.task import ThreadGroup
from v2sync.common.registry import TRANSPORTS
from v2sync.transport.internet.config import SockoptSettings, StreamSettings
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.headers.conn import HeaderClientConnection, accept_http_header
from v2sync.transport.internet.hub import Listening, Transport
from v2sync.transport.internet.sockopt import apply_inbound, apply_outbound
from v2sync.transport.internet.tls import ClientTls, ServerTls

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25
LISTEN_BACKLOG = 1024
# Thread-per-connection means a connection flood is a thread flood; past this many live
# connections per listener new ones are closed at once (1,000 held connections fit under it).
MAX_CONNECTIONS_PER_LISTENER = 4096
# EMFILE/ENFILE on accept: back off instead of spinning on a listener we cannot serve.
ACCEPT_BACKOFF = 0.1


def set_nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (e.g. a unix socket): nothing to tune


def _family(address: Address) -> socket.AddressFamily:
    return socket.AF_INET6 if address.kind is AddressKind.IPV6 else socket.AF_INET


NO_SOCKOPT = SockoptSettings()


def bind_tcp(address: Address, port: int, opt: SockoptSettings = NO_SOCKOPT) -> socket.socket:
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


class StreamListener:
    """Accepts on one listening socket (TCP or unix); the worker that accepts a connection
    also serves it.

    Leader/follower, as the design card puts it ("workers accept"): one worker at a time
    waits in accept(); when a connection arrives it hands the waiting role to a pooled
    thread and serves the connection itself, so no thread hand-over sits between a
    client's connect and its first byte being read.
    """

    def __init__(self, sock: socket.socket, handle: Callable[[Connection], None],
                 workers: ThreadGroup, name: str, on_close: Callable[[], None] = lambda: None):
        self.name = name
        self._handle = handle
        self._workers = workers
        self._sock = sock
        self._on_close = on_close  # e.g. unlink a unix socket file
        self._unix = sock.family == getattr(socket, "AF_UNIX", None)
        self._sock.settimeout(POLL_INTERVAL)  # accept() wakes up to notice close()
        self.port = 0 if self._unix else self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._live = threading.BoundedSemaphore(MAX_CONNECTIONS_PER_LISTENER)

    def start(self, group: Optional[ThreadGroup] = None) -> None:
        self._spawn_leader()

    def _spawn_leader(self) -> bool:
        try:
            self._workers.spawn(f"accept-{self.name}:{self.port}", self._lead)
            return True
        except RuntimeError:
            log.error("%s: cannot start a thread", self.name)
            return False

    def _lead(self) -> None:
        """Wait for one connection, pass the leadership on, then serve the connection."""
        sock = None
        while sock is None and not self._stop.is_set():
            sock = self._accept_one()
        if sock is None:
            self._close_socket()
            return
        if not self._spawn_leader():
            sock.close()  # keep leading rather than leave the port without an acceptor
            self._live.release()
            self._lead()
            return
        self._work(sock)

    def _accept_one(self) -> Optional[socket.socket]:
        try:
            sock, addr = self._sock.accept()
        except socket.timeout:
            return None
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.warning("%s: accept failed (%s); backing off", self.name, e.strerror)
                time.sleep(ACCEPT_BACKOFF)
            elif not self._stop.is_set():
                log.error("%s: accept failed: %s", self.name, e)
                time.sleep(ACCEPT_BACKOFF)
            return None
        if not self._live.acquire(blocking=False):
            log.warning("%s: too many connections; dropping %s", self.name, addr[0])
            sock.close()
            return None
        sock.setblocking(True)
        set_nodelay(sock)
        return sock

    def _work(self, sock: socket.socket) -> None:
        try:
            conn = Connection(sock, UNIX_PEER if self._unix else None)
        except OSError:  # peer already gone (getpeername fails)
            sock.close()
            self._live.release()
            return
        try:
            self._handle(conn)
        finally:
            conn.close()
            self._live.release()

    def _close_socket(self) -> None:
        self._sock.close()
        self._on_close()

    def close_unstarted(self) -> None:
        self._stop.set()
        self._close_socket()

    def close(self) -> None:
        """Stop accepting; the waiting worker closes the listening socket on its way out."""
        self._stop.set()


# A unix-socket peer has no address; v2ray names it by the (empty) socket name.
UNIX_PEER = Destination(Address("@", AddressKind.DOMAIN), 0)


def dial_tcp(dest: Destination, timeout: float, source: Optional[Address] = None,
             opt: SockoptSettings = NO_SOCKOPT) -> Connection:
    """Connect to an IP destination (resolve names before calling). TCP_NODELAY is set."""
    if not dest.address.is_ip:
        raise TransportError(f"dial_tcp needs an IP address, got {dest.address}")
    sock = socket.socket(_family(dest.address), socket.SOCK_STREAM)
    try:
        apply_outbound(sock, opt)
        if source is not None:
            sock.bind((source.value, 0))
        sock.settimeout(timeout)
        sock.connect((dest.address.value, dest.port))
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

    def accept(self, conn: Connection, settings: StreamSettings, tls: Optional[ServerTls],
               deadline: float) -> Connection:
        if tls is not None:
            conn = tls.wrap(conn, deadline)
        if settings.tcp_header is not None:
            conn = accept_http_header(conn, settings.tcp_header, deadline)
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
