"""UDP sockets for the SOCKS UDP relay and freedom's UDP path (v2ray ``transport/internet/udp``)."""
from __future__ import annotations

import selectors
import socket
import threading
from typing import Callable, Generator, Optional, Tuple

from v2sync.common.errors import TransportError
from v2sync.common.net import Address, AddressKind, Destination, Network
from v2sync.common.task import Wait, crowded, wait_lingering
from v2sync.transport.internet.conn import new_socket
from v2sync.transport.internet.config import SockoptSettings
from v2sync.transport.internet.readiness import Readable, ReadWaiter, wait_readable
from v2sync.transport.internet.sockopt import NO_SOCKOPT, apply_outbound, dual_stack

MAX_DATAGRAM = 65535
# The largest datagram payload 4.34 carries: it reads every datagram into one 2 KiB buffer
# (buf.Size), inbound and outbound, and passes on only what fits. v2sync drops a longer one
# whole instead of cutting it (a cut datagram is garbage to every application).
MAX_UDP_PAYLOAD = 2048
# An inbound's UDP socket queues a burst while each new source's session is set up (a thread,
# a dial). The kernel charges ~2.3 KiB for a small datagram, so its default 208 KiB held ~90.
# Measured (dokodemo-door -> freedom, one datagram from each of N new sources at once, three
# rounds): 256 of 300 answered with the default, 300 of 300 and 1,000 of 1,000 with 4 MiB
# (4.34: 254-265 of 300, 487-514 of 1,000). Memory is charged only while datagrams wait.
UDP_RECEIVE_BUFFER = 4 << 20
# Linux: a root (CAP_NET_ADMIN) process may pass net.core.rmem_max, often 208 KiB.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _family(address: Address) -> socket.AddressFamily:
    return socket.AF_INET6 if address.kind is AddressKind.IPV6 else socket.AF_INET


def bind_udp(address: Address, port: int, mark: int = 0,
             transparent: bool = False) -> socket.socket:
    """``transparent``: IP_TRANSPARENT (sockopt.tproxy), so TPROXY'd datagrams arrive."""
    if not transparent:
        address = dual_stack(address)  # 0.0.0.0 takes IPv6 too, as in Go
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    try:
        if address.kind is AddressKind.IPV6 and address.value == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if transparent:
            from v2sync.transport.internet.tproxy import set_transparent
            set_transparent(sock)
            # answering sockets bind to the same original destinations (tproxy.py)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _large_receive_buffer(sock)
        sock.bind((address.value, port))
    except OSError as e:
        sock.close()
        raise TransportError(f"failed to listen on udp {address}:{port}: {e.strerror or e}") from e
    except TransportError:
        sock.close()
        raise
    return sock


def _large_receive_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_RECEIVE_BUFFER)
    except OSError:  # not root: the kernel caps it at net.core.rmem_max
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)


def peer_sockaddr(sock: socket.socket, dest: Destination) -> Tuple[str, int]:
    """Where ``sendto`` goes: an IPv4 peer of a dual-stack ("::") socket is written as
    ``::ffff:a.b.c.d``, since the socket takes only IPv6 addresses (its datagrams arrive
    from such addresses, and ``Address.parse`` turns them back into IPv4)."""
    host = dest.address.value
    if sock.family == socket.AF_INET6 and dest.address.kind is AddressKind.IPV4:
        host = "::ffff:" + host
    return host, dest.port


def open_udp(dest: Destination, source: Optional[Address] = None,
             opt: SockoptSettings = NO_SOCKOPT) -> socket.socket:
    """An unconnected UDP socket for sending to ``dest`` (an IP): what 4.34's system dialer
    gives freedom (``packetConnWrapper``). It reads answers from any address, so a peer
    behind it sees a full cone: whoever learns the port can answer through it. The
    outbound's ``sockopt`` applies as to TCP (a gateway's ``mark`` keeps its own traffic
    out of its TPROXY rules)."""
    sock = new_socket(_family(dest.address), socket.SOCK_DGRAM, f"failed to open udp to {dest}")
    try:
        apply_outbound(sock, opt, tcp=False)
        sock.bind((source.value if source is not None else "", 0))
    except OSError as e:
        sock.close()
        raise TransportError(f"failed to open udp to {dest}: {e.strerror or e}") from e
    except TransportError:
        sock.close()
        raise
    return sock


def shutdown_udp(sock: socket.socket) -> None:
    """Wake a thread blocked in ``recv`` on ``sock`` (it returns b""); never raises."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected, or already closed


def recv_past_icmp(sock: socket.socket, size: int, flags: int = 0) -> bytes:
    """``sock.recv(size, flags)``, past the ICMP errors of earlier sends. A connected UDP
    socket reports an ICMP "port unreachable" as ConnectionRefusedError on its next call and
    stays usable; 4.34 reads with ReadFrom on an unconnected socket, which never sees them,
    so a peer that was down for a moment (restarting) answers again. Each error is reported
    once: the loop ends with the errors queued. Any other OSError (closed, or EAGAIN under
    MSG_DONTWAIT) is raised."""
    while True:
        try:
            return sock.recv(size, flags)
        except ConnectionRefusedError:
            continue


def recv_or_park(sock: socket.socket, size: int, waiter: ReadWaiter, linger: float,
                 stopped: Callable[[], bool]) -> Generator[Wait, None, bytes]:
    """``recv_past_icmp`` as steps: after ``linger`` seconds with nothing to read (at once
    in a crowded group, or with MAX_LINGERING readers lingering already) the reader parks
    in ``waiter``'s selector, holding no thread, until a datagram or ``shutdown_udp``; b""
    once ``stopped()`` (a shut-down UDP socket polls readable, but a non-blocking recv on
    it fails with EAGAIN, never returns b""). An answer that comes quickly, as a DNS
    answer does, is read in the same thread with no hand-over. ``sock`` may be any object
    with ``fileno`` and ``recv(size, flags)``. Raises as ``recv_past_icmp``."""
    wait = 0.0 if crowded() else linger
    while not stopped():
        try:
            return recv_past_icmp(sock, size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        if not wait or not wait_lingering(wait_readable, sock, wait):
            yield Readable(sock, waiter)
        wait = 0.0
    return b""


def dial_udp(dest: Destination, source: Optional[Address] = None,
             opt: SockoptSettings = NO_SOCKOPT) -> socket.socket:
    """A UDP socket connected to ``dest`` (an IP), so only its replies come back; the
    outbound's ``sockopt`` applies as in ``open_udp``."""
    sock = new_socket(_family(dest.address), socket.SOCK_DGRAM, f"failed to dial udp {dest}")
    try:
        apply_outbound(sock, opt, tcp=False)
        if source is not None:
            sock.bind((source.value, 0))
        sock.connect((dest.address.value, dest.port))
    except OSError as e:
        sock.close()
        raise TransportError(f"failed to dial udp {dest}: {e.strerror or e}") from e
    except TransportError:
        sock.close()
        raise
    return sock


def wake_own_poll(sock: socket.socket) -> None:
    """An empty datagram to ``sock``'s own address: the thread polling it wakes now (to see
    it was told to stop) instead of at its next timeout."""
    try:
        sock.sendto(b"", sock.getsockname()[:2])
    except OSError:
        pass  # closed already, or unreachable: the poll's timeout still ends the loop


class UdpListener:
    """Receives datagrams on one address/port and hands each to ``handle(data, source)``.

    One thread, polled through a selector so ``close()`` is noticed within ``POLL_INTERVAL``.
    Replies go out through ``send_to`` from any thread (sendto on a UDP socket is atomic).
    """

    POLL_INTERVAL = 0.25

    def __init__(self, address: Address, port: int,
                 handle: Callable[[bytes, Destination], None], name: str):
        self.name = name
        self._handle = handle
        self._sock = bind_udp(address, port)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()

    def start(self, group) -> None:
        group.spawn(f"udp-{self.name}:{self.port}", self._serve)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(self.POLL_INTERVAL) or self._stop.is_set():
                    continue
                try:
                    data, source = self._sock.recvfrom(MAX_UDP_PAYLOAD + 1)
                except OSError:
                    continue  # ICMP errors surface here on Linux; the socket stays usable
                if not data or len(data) > MAX_UDP_PAYLOAD:
                    continue  # 4.34 skips empty datagrams; longer ones: see MAX_UDP_PAYLOAD
                self._handle(data, Destination(Address.parse(source[0]), source[1], Network.UDP))
        self._sock.close()

    def send_to(self, data: bytes, dest: Destination) -> None:
        try:
            self._sock.sendto(data, peer_sockaddr(self._sock, dest))
        except OSError:
            pass  # the client went away; UDP has no one to tell

    def close_unstarted(self) -> None:
        self._stop.set()
        self._sock.close()

    def close(self) -> None:
        """Stop; the serving thread closes the socket. An empty datagram to the socket's
        own address wakes its poll now, so the port is free within milliseconds (a reload
        binds it again at once) instead of at the next POLL_INTERVAL."""
        self._stop.set()
        wake_own_poll(self._sock)
