"""``streamSettings.sockopt`` (v2ray ``transport/internet/sockopt_linux.go``).

Applied to a socket before it connects or listens. A failure (no CAP_NET_ADMIN for
``mark``, say) fails that dial or listen with the reason, as in 4.34; a platform without
the option at all is refused when the config is built (``config.build_sockopt``).
"""
from __future__ import annotations

import functools
import socket

from v2sync.common.errors import TransportError
from v2sync.common.net import ANY_IPV6, Address
from v2sync.transport.internet.config import SockoptSettings

# Linux values; CPython exports TCP_FASTOPEN but not TCP_FASTOPEN_CONNECT (Linux >= 4.11).
TCP_FASTOPEN_CONNECT = getattr(socket, "TCP_FASTOPEN_CONNECT", 30)
# Listener TFO queue length. 4.34 passes 1 (the option's boolean reading); the kernel treats
# the value as the queue of pending fast-open requests, so give it a usable size.
TFO_QUEUE = 256
NO_SOCKOPT = SockoptSettings()  # the default of every socket maker that takes options


def apply_outbound(sock: socket.socket, opt: SockoptSettings, tcp: bool = True) -> None:
    _mark(sock, opt)
    if tcp and opt.tcp_fast_open is not None:
        _set(sock, socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, int(opt.tcp_fast_open),
             "TCP_FASTOPEN_CONNECT")


def apply_inbound(sock: socket.socket, opt: SockoptSettings, tcp: bool = True) -> None:
    _mark(sock, opt)
    if opt.tproxy != "off":  # sockopt_linux.go: either mode makes listeners transparent
        from v2sync.transport.internet.tproxy import set_transparent
        set_transparent(sock)
    if tcp and opt.tcp_fast_open is not None:
        _set(sock, socket.IPPROTO_TCP, socket.TCP_FASTOPEN,
             TFO_QUEUE if opt.tcp_fast_open else 0, "TCP_FASTOPEN")


def _mark(sock: socket.socket, opt: SockoptSettings) -> None:
    if opt.mark:
        _set(sock, socket.SOL_SOCKET, socket.SO_MARK, opt.mark, "SO_MARK")


def _set(sock: socket.socket, level: int, name: int, value: int, what: str) -> None:
    try:
        sock.setsockopt(level, name, value)
    except OSError as e:
        raise TransportError(f"failed to set {what}={value}: {e.strerror or e}") from e


ANY_IPV4_TEXT = "0.0.0.0"


def dual_stack(address: Address) -> Address:
    """``0.0.0.0`` as Go listens on it: on ``[::]``, taking IPv4 and IPv6 alike (its net
    package opens every wildcard address so), where the host has IPv6; else as given."""
    if address.value != ANY_IPV4_TEXT or not _has_ipv6():
        return address
    return ANY_IPV6


@functools.lru_cache(maxsize=1)
def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::", 0))
        return True
    except OSError:
        return False
