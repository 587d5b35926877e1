"""``proxySettings``: an outbound whose connections another outbound carries (v2ray
``app/proxyman/outbound/handler.go`` Dial).

4.34 gives the outbound, in place of a dialled socket, a connection made of two pipes whose
other ends are a link handed to the outbound named by ``proxySettings.tag``, its target the
server the first outbound wanted. Only TLS from the first outbound's ``streamSettings`` is
applied on top; its transport (WebSocket, the HTTP header, sockopt) is not. A tag no
outbound has is logged as a warning and the dial goes on as usual.

Here the connection is one end of a ``socketpair``, and the other end is relayed into the
link as an inbound's client is (``relay_stream_steps``): the outbound's protocol, TLS and
parked readers work on it as on any socket. The carrying outbound runs as a task of the
Instance's thread group, as the dispatcher runs one.

An outbound's own UDP (freedom's, Shadowsocks', SOCKS' relay, the ``dns`` outbound's) goes
the same way, as 4.34 dials it through the same ``Dial``: a ``SOCK_SEQPACKET`` pair keeps
each datagram whole, and the link to the carrier is a UDP one (``CarriedDatagrams``).
"""
from __future__ import annotations

import logging
import socket
from typing import Any, Callable, List, Optional, Tuple

from v2sync.common.errors import TransportError
from v2sync.common.net import Destination, Network
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.proxy.relay import relay_datagrams_steps, relay_stream_steps
from v2sync.transport.copy import PARK_AFTER
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.readiness import ReadWaiter
from v2sync.transport.internet.udp import recv_or_park, shutdown_udp
from v2sync.transport.link import Link, new_link_pair
from v2sync.transport.pipe import Pipe

# The largest datagram a carried UDP socket passes on (a UDP payload's limit).
MAX_DATAGRAM = 65535

log = logging.getLogger(__name__)


class ChainDialer:
    """Dials for an outbound through the outbound tagged ``tag`` (found at each dial, as
    4.34's GetHandler: the API may add or remove it meanwhile)."""

    def __init__(self, tag: str, owner: str, outbounds, ctx):
        self.tag = tag
        self.owner = owner  # the carried outbound's tag, for the logs
        self.outbounds = outbounds  # app.proxyman.outbound.OutboundManager
        self.ctx = ctx  # features.proxy.ProxyContext

    def dial(self, target: Destination) -> Optional[Connection]:
        """A connection to ``target`` through the carrying outbound; None when no outbound
        has the tag (4.34 warns and dials directly)."""
        found = self._pair(target, socket.SOCK_STREAM)
        if found is None:
            return None
        handler, session, ours, theirs = found
        conn = Connection(theirs, target)
        try:
            ends = self._carry(handler, session, conn.close,
                               lambda link: self._relay(session, conn, link))
        except TransportError:
            ours.close()
            raise
        return CarriedConnection(ours, target, ends.reader)

    def datagrams(self, target: Destination) -> "Optional[CarriedDatagrams]":
        """A UDP socket's stand-in whose datagrams go to ``target`` through the carrying
        outbound; None when no outbound has the tag (4.34 warns and dials directly)."""
        found = self._pair(Destination(target.address, target.port, Network.UDP),
                           socket.SOCK_SEQPACKET)
        if found is None:
            return None
        handler, session, ours, theirs = found
        try:
            self._carry(handler, session, theirs.close,
                        lambda link: self._relay_datagrams(session, theirs, link))
        except TransportError:
            ours.close()
            raise
        return CarriedDatagrams(ours)

    def _pair(self, target: Destination,
              kind: int) -> Optional[Tuple[Any, Session, socket.socket, socket.socket]]:
        """The carrier, the session it serves and a socketpair; None without a carrier."""
        handler = self.outbounds.get(self.tag)
        if handler is None:
            log.warning("failed to get outbound handler with tag: %s", self.tag)
            return None
        session = Session(inbound_tag=f"{self.owner or 'out'}-via-{self.tag}", source=target,
                          target=target, outbound_tag=self.tag)
        log.debug("%s: proxying to %s for dest %s", session.name(), self.tag, target)
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
        except OSError as e:
            raise TransportError(f"failed to dial {target} through {self.tag}: {e}") from e
        return handler, session, ours, theirs

    def _carry(self, handler, session: Session, close: Callable[[], None],
               relay: Callable[[Link], Steps[None]]) -> Link:
        """``handler`` (the carrier) on one end of a new link and ``relay(link)``'s steps
        on the other, each a task of the thread group; returns the relay's end. ``close``
        lets the far socket go if one cannot start."""
        policy = self.ctx.policy.for_level(0)
        ends, outbound_side = new_link_pair(self.ctx.policy.pipe_limit(policy), session.name())
        threads = self.ctx.threads
        try:
            threads.spawn_steps(f"out-{session.name()}", handler.dispatch_steps(session,
                                                                                outbound_side))
        except RuntimeError as e:
            close()
            raise TransportError(f"cannot start the outbound {self.tag}: {e}") from e
        try:
            threads.spawn_steps(f"chain-{session.name()}", relay(ends))
        except RuntimeError as e:
            close()
            ends.interrupt()
            raise TransportError(f"cannot relay to the outbound {self.tag}: {e}") from e
        return ends

    def _relay_datagrams(self, session: Session, sock: socket.socket,
                         link: Link) -> Steps[None]:
        """The carried socket's datagrams into the link, the link's back out, one by one."""
        try:
            error = yield from relay_datagrams_steps(
                self.ctx, session.name(), self.ctx.policy.for_level(0),
                _PairEnd(sock, self.ctx.readiness), link)
            if error is not None:
                log.debug("%s: datagrams through %s ended: %s", session.name(), self.tag,
                          error)
        finally:
            sock.close()

    def _relay(self, session: Session, conn: Connection, link: Link) -> Steps[None]:
        policy = self.ctx.policy.for_level(0)
        try:
            error = yield from relay_stream_steps(self.ctx, session.name(), policy, conn, link)
            if error is not None:
                log.debug("%s: relay through %s ended: %s", session.name(), self.tag, error)
        finally:
            conn.close()


class _PairEnd:
    """The chain's end of a carried datagram pair as ``relay.PacketConn``."""

    def __init__(self, sock: socket.socket, waiter: ReadWaiter):
        self._sock = sock
        self._waiter = waiter

    def read_steps(self) -> Steps[Optional[List[bytes]]]:
        data = yield from recv_or_park(self._sock, MAX_DATAGRAM, self._waiter, PARK_AFTER,
                                       _never)
        return [data] if data else None  # b"": the outbound closed its end (or shut down)

    def write(self, data: bytes) -> None:
        self._sock.send(data)

    def abort(self) -> None:
        shutdown_udp(self._sock)


def _never() -> bool:
    """A socket pair's end reads b"" once shut down, so nothing else tells its reader."""
    return False


class CarriedConnection(Connection):
    """The carried outbound's end of the stream. An end while the carrier's answers were
    interrupted (it failed, or the chain timed out) reads as a reset, as 4.34's pipe
    connection returns an error there: the outbound's relay then ends at once, where an
    end of stream would leave its other direction to ``uplinkOnly``."""

    def __init__(self, sock: socket.socket, remote: Destination, answers: Pipe):
        super().__init__(sock, remote)
        self._answers = answers

    def recv(self, max_bytes: int) -> bytes:
        data = super().recv(max_bytes)
        if not data and self._answers.is_interrupted:
            raise ConnectionResetError("the carrying outbound failed")
        return data


class CarriedDatagrams:
    """What an outbound's UDP code uses of its socket, for datagrams another outbound
    carries: one end of a ``SOCK_SEQPACKET`` pair. Every datagram goes to the destination
    the chain was made for, whatever address a ``sendto`` names, as 4.34's pipe connection
    writes only there."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def send(self, data: bytes) -> int:
        return self._sock.send(data)

    def sendto(self, data: bytes, address: object) -> int:
        return self._sock.send(data)

    def recv(self, size: int, flags: int = 0) -> bytes:
        """A datagram; OSError once the pair is shut down or the carrier's side closed
        (a UDP socket has no end of stream, and the outbounds' readers stop at OSError).
        The chain never passes an empty datagram on, so an empty read is always the end."""
        data = self._sock.recv(size, flags)
        if not data:
            raise ConnectionResetError("the carried datagrams ended")
        return data

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def fileno(self) -> int:  # a parked reader waits for it in a selector
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()
