"""``network: "domainsocket"`` (v2ray ``transport/internet/domainsocket``).

The inbound listens on ``dsSettings.path`` (a file, or an abstract name with ``abstract``),
ignoring its address and port; the outbound connects to that path, ignoring the
destination. TLS may run on top. A file socket is guarded by ``<path>.lock`` (flock), as in
4.34, and the socket file is removed when the listener closes.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import time
from typing import Callable, Optional

from v2sync.common.errors import TransportError
from v2sync.common.net import Address, AddressKind, Destination
from v2sync.common.registry import TRANSPORTS
from v2sync.transport.internet.config import DsSettings, StreamSettings
from v2sync.transport.internet.conn import Connection, Handshake, new_socket
from v2sync.transport.internet.hub import Listening, Transport
from v2sync.transport.internet.tcp import LISTEN_BACKLOG
from v2sync.transport.internet.tls import ClientTls, ServerTls


def bind_unix(ds: DsSettings) -> Listening:
    address = ds.address()
    # 4.34 locks ``<path>.lock`` whenever ``abstract`` is off, even for an ``@`` path.
    release = _lock(ds) if not ds.abstract else _no_lock
    on_disk = not address.startswith("\0")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if on_disk:
            _remove_stale(ds.path)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        release()
        raise TransportError(f"failed to listen on domain socket {ds.path!r}: "
                             f"{e.strerror or e}") from e

    def cleanup() -> None:
        if on_disk:
            _unlink(ds.path)
        release()

    return sock, cleanup


def _remove_stale(path: str) -> None:
    """A socket file nobody listens on is left over from a crash: remove it. A live one,
    or a file that is not a socket, makes bind fail with "address already in use"."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        _unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


def _lock(ds: DsSettings) -> Callable[[], None]:
    """``<path>.lock`` held with flock for the listener's life (domainsocket/listener.go)."""
    lock_path = ds.path + ".lock"
    try:
        fd = os.open(lock_path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise TransportError(f"failed to create {lock_path!r}: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        reason = "another process holds it" if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) \
            else e.strerror
        raise TransportError(f"failed to lock {lock_path!r}: {reason}") from e

    def release() -> None:
        os.close(fd)  # closing drops the flock
        _unlink(lock_path)

    return release


def _no_lock() -> None:
    """Abstract names vanish with their socket: nothing to lock or remove."""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def dial_unix(ds: DsSettings, timeout: float) -> Connection:
    sock = new_socket(socket.AF_UNIX, socket.SOCK_STREAM, f"failed to dial unix {ds.path!r}")
    try:
        sock.settimeout(timeout)
        sock.connect(ds.address())
    except OSError as e:
        sock.close()
        raise TransportError(f"failed to dial unix {ds.path!r}: {e.strerror or e}") from e
    return Connection(sock, Destination(Address(ds.path, AddressKind.DOMAIN), 0))


class DomainSocketTransport(Transport):
    uses_address = False

    def listen(self, address: Address, port: int, settings: StreamSettings) -> Listening:
        return bind_unix(settings.ds)

    def accept_steps(self, conn: Connection, settings: StreamSettings,
                     tls: Optional[ServerTls], deadline: float) -> Handshake[Connection]:
        if tls is not None:
            conn = yield from tls.wrap_steps(conn, deadline)
        return conn

    def dial(self, target: Destination, ip_dest: Destination, settings: StreamSettings,
             tls: Optional[ClientTls], timeout: float, source: Optional[Address]) -> Connection:
        conn = dial_unix(settings.ds, timeout)
        if tls is None:
            return conn
        try:
            return tls.wrap(conn, target, time.monotonic() + timeout)
        except BaseException:
            conn.close()
            raise


TRANSPORTS.add("domainsocket", DomainSocketTransport())
