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
from v2sync.transport.internet.conn import Connection

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


def bind_tcp(address: Address, port: int) -> socket.socket:
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if address.kind is AddressKind.IPV6 and address.value == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" serves v4 too
        sock.bind((address.value, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        raise TransportError(f"failed to listen on {address}:{port}: {e.strerror or e}") from e
    return sock


class TcpListener:
    """Accepts on one address/port; the worker that accepts a connection also serves it.

    Leader/follower, as the design card puts it ("workers accept"): one worker at a time
    waits in accept(); when a connection arrives it hands the waiting role to a pooled
    thread and serves the connection itself, so no thread hand-over sits between a
    client's connect and its first byte being read.
    """

    def __init__(self, address: Address, port: int, handle: Callable[[Connection], None],
                 workers: ThreadGroup, name: str):
        self.address = address
        self.name = name
        self._handle = handle
        self._workers = workers
        self._sock = bind_tcp(address, port)
        self._sock.settimeout(POLL_INTERVAL)  # accept() wakes up to notice close()
        self.port = self._sock.getsockname()[1]
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
            self._sock.close()
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
            conn = Connection(sock)
        except OSError:  # peer already gone (getpeername fails)
            sock.close()
            self._live.release()
            return
        try:
            self._handle(conn)
        finally:
            conn.close()
            self._live.release()

    def close_unstarted(self) -> None:
        self._stop.set()
        self._sock.close()

    def close(self) -> None:
        """Stop accepting; the waiting worker closes the listening socket on its way out."""
        self._stop.set()


def dial_tcp(dest: Destination, timeout: float, source: Optional[Address] = None) -> Connection:
    """Connect to an IP destination (resolve names before calling). TCP_NODELAY is set."""
    if not dest.address.is_ip:
        raise TransportError(f"dial_tcp needs an IP address, got {dest.address}")
    sock = socket.socket(_family(dest.address), socket.SOCK_STREAM)
    try:
        if source is not None:
            sock.bind((source.value, 0))
        sock.settimeout(timeout)
        sock.connect((dest.address.value, dest.port))
    except OSError as e:
        sock.close()
        raise TransportError(f"failed to dial {dest}: {e.strerror or e}") from e
    set_nodelay(sock)
    return Connection(sock, dest)
