"""Transparent proxying on Linux (v2ray ``transport/internet/sockopt_linux.go``,
``tcp/sockopt_linux.go``, ``udp/hub_linux.go``).

``sockopt.tproxy`` names how packets were sent to us:
- ``redirect`` (iptables REDIRECT, NAT): the connection's original destination is asked of
  conntrack with ``SO_ORIGINAL_DST``;
- ``tproxy`` (iptables TPROXY): nothing is rewritten; the socket's own local address *is* the
  original destination (TCP), and each datagram's arrives as ``IP_RECVORIGDSTADDR`` ancillary
  data (UDP). Answers must come from that address, through a socket bound to it with
  ``IP_TRANSPARENT``.
Either mode sets ``IP_TRANSPARENT`` on the listeners, as 4.34 does (it needs CAP_NET_ADMIN;
without it the listen fails with the kernel's reason).
"""
from __future__ import annotations

import functools
import socket
import struct
from typing import Collection, Optional, Sequence, Tuple

from v2sync.common.errors import TransportError
from v2sync.common.net import Address, AddressKind, Destination, Network
from v2sync.transport.internet.conn import new_socket

TPROXY_OFF = "off"
TPROXY_REDIRECT = "redirect"
TPROXY_TPROXY = "tproxy"
TPROXY_MODES = (TPROXY_OFF, TPROXY_REDIRECT, TPROXY_TPROXY)

# <linux/in.h>, <linux/in6.h>, <linux/netfilter_ipv4.h>; CPython exports only IP_TRANSPARENT.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
IP_RECVORIGDSTADDR = 20
IPV6_RECVORIGDSTADDR = 74
SO_ORIGINAL_DST = 80
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)
# struct sockaddr_in is 16 bytes, sockaddr_in6 28; both start family(2) port(2, big endian).
SOCKADDR_IN_SIZE = 16
SOCKADDR_IN6_SIZE = 28
# Room for one IP_ORIGDSTADDR control message of either family.
ORIG_DST_CMSG_SPACE = socket.CMSG_SPACE(SOCKADDR_IN6_SIZE)

Ancillary = Sequence[Tuple[int, int, bytes]]


def set_transparent(sock: socket.socket) -> None:
    """``IP_TRANSPARENT``: bind to addresses that are not ours, accept TPROXY'd packets."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
            # a dual-stack socket also takes IPv4 packets; 4.34 sets only SOL_IP here
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    except OSError as e:
        raise TransportError(f"failed to set IP_TRANSPARENT: {e.strerror or e}") from e


def enable_original_destination(sock: socket.socket) -> None:
    """Ask for each datagram's original destination (both families; one may fail)."""
    errors = []
    for level, name in ((SOL_IPV6, IPV6_RECVORIGDSTADDR), (socket.SOL_IP, IP_RECVORIGDSTADDR)):
        try:
            sock.setsockopt(level, name, 1)
        except OSError as e:
            errors.append(e)
    if len(errors) == 2:
        raise TransportError(f"failed to set IP_RECVORIGDSTADDR: {errors[0].strerror}")


def original_destination_of_datagram(ancillary: Ancillary) -> Optional[Destination]:
    """The ``IP_ORIGDSTADDR`` control message of a ``recvmsg``, or None."""
    for level, kind, data in ancillary:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            return _destination(socket.AF_INET, data[4:8], data[2:4], Network.UDP)
        if level == SOL_IPV6 and kind == IPV6_RECVORIGDSTADDR and len(data) >= 24:
            return _destination(socket.AF_INET6, data[8:24], data[2:4], Network.UDP)
    return None


def is_self(dest: Destination, ports: Collection[int]) -> bool:
    """``dest`` is this listener itself: one of its ``ports``, on an address of this
    machine. A client that sends to the gateway's own door port makes the proxy dial
    itself, round and round: one UDP datagram held ~4,500 threads and ~190 MB (4.34 loops
    too; found by a review)."""
    return dest.port in ports and _is_local(dest.address)


@functools.lru_cache(maxsize=256)
def _is_local(address: Address) -> bool:
    """An address this machine holds: one a plain socket may bind (asked once per address;
    only a destination on a listener's own port is asked at all)."""
    family = socket.AF_INET6 if address.kind is AddressKind.IPV6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def redirected_destination(sock: socket.socket) -> Destination:
    """``SO_ORIGINAL_DST`` of a REDIRECTed TCP connection (IPv4, as in 4.34)."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN_SIZE)
    except OSError as e:
        raise TransportError(f"failed to get original destination: {e.strerror or e}") from e
    return _destination(socket.AF_INET, raw[4:8], raw[2:4], Network.TCP)


def original_tcp_destination(sock: socket.socket, mode: str) -> Optional[Destination]:
    """Where a TCP client was going, by ``mode`` (tcpWorker.callback in 4.34)."""
    if mode == TPROXY_REDIRECT:
        return redirected_destination(sock)
    if mode == TPROXY_TPROXY:
        host, port = sock.getsockname()[:2]
        return Destination(Address.parse(host), port, Network.TCP)
    return None


def _destination(family: int, packed: bytes, port: bytes, network: Network) -> Destination:
    address = Address.parse(socket.inet_ntop(family, packed))
    return Destination(address, struct.unpack("!H", port)[0], network)


def bind_reply_socket(local: Destination, peer: Destination,
                      mark: int = 0) -> socket.socket:
    """A UDP socket bound to ``local`` (an address not ours) and connected to ``peer``,
    so answers leave from the address the client sent to (dokodemo.go's tproxy dial)."""
    family = socket.AF_INET6 if local.address.kind is AddressKind.IPV6 else socket.AF_INET
    sock = new_socket(family, socket.SOCK_DGRAM, f"failed to open a reply socket at {local}")
    try:
        set_transparent(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.bind((local.address.value, local.port))
        sock.connect((peer.address.value, peer.port))
    except (OSError, TransportError) as e:
        sock.close()
        raise TransportError(f"failed to answer {peer} from {local}: {e}") from e
    return sock
