"""The UDP worker of an inbound (v2ray ``app/proxyman/inbound/worker.go::udpWorker``).

One UDP socket per port of an inbound whose proxy takes UDP as packet connections
(dokodemo-door with ``network`` udp; Shadowsocks builds on it too). Datagrams are sorted by
source (and, under TPROXY, by original destination); each new source gets a
``PacketConn``, handed to the proxy as a task of its own, written as steps
(``ThreadGroup.spawn_steps``)::

    yield from proxy.process_steps(session, conn, dispatcher)

where ``session`` carries ``inbound_tag``, ``source`` and (with ``followRedirect``)
``original_target``, and ``conn`` answers:

- ``conn.read_steps() -> list of bytes | None`` (steps): the datagrams from that source
  queued now, each whole, or None once the connection is closed (idle, shutdown); raises
  nothing else. While none comes the task parks: an idle source holds no thread.
- ``conn.write(data)``: one datagram back to the source, from the listening socket or,
  under TPROXY, from the original destination (a transparent socket bound to it). Errors
  are dropped, as UDP drops them.
- ``conn.abort()``: ``read`` returns None at once; queued datagrams are dropped.
- ``conn.remote`` (the source), ``conn.local`` (the listening address), ``conn.original``
  (the original destination under TPROXY with ``followRedirect``, else None),
  ``conn.network`` (``Network.UDP``).

When ``process_steps`` returns, the connection is closed and forgotten; the next datagram
from that source starts a new one. What 4.34 does and this keeps:
- a source's queue holds ``SOURCE_QUEUE_BYTES``; datagrams beyond it are dropped, never
  waited for (4.34: a 16 KiB pipe with DiscardOverflow);
- a connection with no datagram in either direction for ``SESSION_IDLE`` seconds is closed
  (4.34 checks every 16 s for 8 s of silence; here every ``CLEAN_INTERVAL``);
- empty datagrams are ignored. Datagrams longer than ``MAX_UDP_PAYLOAD`` (4.34 reads into
  2 KiB buffers and passes on the first 2 KiB) are dropped whole rather than passed on cut.
And what it adds: at most ``MAX_SOURCES`` connections per worker (each holds its queue,
its link and its outbound's socket). A new source past it closes the connection that has
been quiet longest: 4.34 has no
cap, and dropping new sources instead let a flood of forged source addresses (free to send,
no key needed for Shadowsocks' garbage either) lock every new client out until the flood's
connections idled out, ~9 s (found by a review).
"""
from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from v2sync.app.dispatcher.udp import QuietestFirst
from v2sync.common.errors import TransportError, V2SyncError
from v2sync.common.net import Address, Destination, Network
from v2sync.common.session import Session
from v2sync.common.task import Steps, ThreadGroup, yield_cpu
from v2sync.transport.internet import tproxy
from v2sync.transport.internet.config import SockoptSettings
from v2sync.transport.internet.counting import adder
from v2sync.transport.internet.udp import MAX_UDP_PAYLOAD, bind_udp, peer_sockaddr, wake_own_poll
from v2sync.transport.copy import read_all_steps
from v2sync.transport.pipe import EOF, Pipe

log = logging.getLogger(__name__)

SOURCE_QUEUE_BYTES = 16 * 1024
SESSION_IDLE = 8.0
CLEAN_INTERVAL = 1.0
MAX_SOURCES = 1024
POLL_INTERVAL = 0.25
RECV_BATCH = 64  # datagrams read per readiness before the loop looks around again
# A datagram is read whole into this (the largest UDP payload), then judged by its length.
RECV_BUFFER = 65536

Key = Tuple[Destination, Optional[Destination]]


class PacketConn:
    """One source's datagrams, as a connection the inbound proxy reads and writes."""

    network = Network.UDP

    def __init__(self, worker: "UdpWorker", key: Key, reply: Optional[socket.socket]):
        self.remote, self.original = key
        self.local = worker.local
        self._worker = worker
        self._key = key
        self._reply = reply  # the transparent socket bound to the original destination
        self._queue = Pipe(SOURCE_QUEUE_BYTES, f"udp-{self.remote}")
        self.last_activity = time.monotonic()

    def read_steps(self) -> Steps[Optional[List[bytes]]]:
        """Every datagram from the source queued now, whole and in order, or None once the
        connection is closed or aborted. Steps: a reader waiting for the source parks (an
        idle source holds no thread)."""
        try:
            chunks = yield from read_all_steps(self._queue)
        except TransportError:  # aborted
            return None
        if chunks is EOF:  # closed
            return None
        self.last_activity = time.monotonic()
        return chunks

    def write(self, data: bytes) -> None:
        if len(data) > MAX_UDP_PAYLOAD:
            log.debug("dropping a %d-byte datagram to %s", len(data), self.remote)
            return
        try:
            if self._reply is not None:
                self._reply.send(data)
            else:
                self._worker.send_to(data, self.remote)
        except OSError as e:
            log.debug("udp answer to %s failed: %s", self.remote, e)
            return
        self._worker.count_sent(len(data))
        self.last_activity = time.monotonic()

    def offer(self, data: bytes) -> None:
        """A datagram from the source: queued, or dropped when the queue is full."""
        try:
            if not self._queue.try_write(data):
                log.debug("udp queue of %s full; datagram dropped", self.remote)
                return
        except TransportError:
            return  # closed meanwhile; the source's next datagram opens a new connection
        if self._queue.buffered > SOURCE_QUEUE_BYTES // 2:
            # The reader is behind. Every thread shares one CPU: without a yield this loop
            # fills the queue (12 datagrams of 1,400 bytes) before the reader is scheduled
            # and drops the rest of a burst, where 4.34's reader drains it meanwhile.
            yield_cpu()

    def is_idle(self, now: float) -> bool:
        return now - self.last_activity > SESSION_IDLE

    def abort(self) -> None:
        self._queue.interrupt()

    def close(self) -> None:
        self._queue.close()
        self._worker.forget(self._key, self)

    @property
    def reply_socket(self) -> Optional[socket.socket]:
        return self._reply


def _last_activity(conn: PacketConn) -> float:
    return conn.last_activity


class UdpWorker:
    """One port's UDP socket, its table of sources, and the thread that reads them.

    Same life cycle as ``transport.internet.udp.UdpListener``: built bound, ``start(group)``
    reads in a thread of ``group``, ``close()`` stops it (the socket is closed by that
    thread) and aborts every connection; ``close_unstarted()`` if it never started.
    """

    def __init__(self, proxy: Any, dispatcher: Any, threads: ThreadGroup, address: Address,
                 port: int, tag: str, sockopt: Optional[SockoptSettings] = None,
                 follow_redirect: bool = False, counters: Tuple[Any, Any] = (None, None)):
        self.proxy = proxy
        # The inbound's (uplink, downlink) counters: each datagram whole, as 4.34's worker.
        self.count_received, self.count_sent = (adder(counter) for counter in counters)
        self.dispatcher = dispatcher
        self.threads = threads
        self.tag = tag
        self.mode = sockopt.tproxy if sockopt is not None else tproxy.TPROXY_OFF
        self.mark = sockopt.mark if sockopt is not None else 0
        # A datagram's original destination means something only under TPROXY: REDIRECT
        # has already rewritten it to this socket's own address, and 4.34, which takes it
        # anyway, sends the datagram back to this very door (a loop). Without TPROXY the
        # proxy's fixed destination is used.
        self.follow_redirect = follow_redirect and self.mode == tproxy.TPROXY_TPROXY
        self._sock = self._bind(address, port)
        self.port = self._sock.getsockname()[1]
        self.local = Destination(address, self.port, Network.UDP)
        self._conns: Dict[Key, PacketConn] = {}
        self._quietest: QuietestFirst[Key, PacketConn] = QuietestFirst(_last_activity)
        self._retired: List[socket.socket] = []
        self._shut = False  # the reading thread has ended: nobody releases retired sockets
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._buffer = bytearray(RECV_BUFFER)

    def _bind(self, address: Address, port: int) -> socket.socket:
        transparent = self.mode != tproxy.TPROXY_OFF
        sock = bind_udp(address, port, self.mark, transparent)
        if self.follow_redirect:
            try:
                tproxy.enable_original_destination(sock)
            except TransportError:
                sock.close()
                raise
        return sock

    # -- the reading thread ----------------------------------------------------------
    def start(self, group: ThreadGroup) -> None:
        group.spawn(f"udp-{self.tag or 'in'}:{self.port}", self._serve)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ, None)
            next_clean = time.monotonic() + CLEAN_INTERVAL
            try:
                while not self._stop.is_set():
                    for key, _ in selector.select(POLL_INTERVAL):
                        if self._stop.is_set():
                            break  # close()'s wake-up datagram, or anything behind it
                        # whatever queued up, without a select() per datagram
                        for _ in range(RECV_BATCH):
                            if not self._receive(key.fileobj, key.data, selector):
                                break
                    self._release_retired(selector)
                    if time.monotonic() >= next_clean:
                        self._clean()
                        next_clean = time.monotonic() + CLEAN_INTERVAL
            finally:
                self._shutdown(selector)

    def _receive(self, sock: Any, conn: Optional[PacketConn], selector) -> bool:
        """One datagram, if one is waiting (False: none, or the socket reported an error)."""
        try:
            size, ancillary, flags, source = sock.recvmsg_into(
                [self._buffer], tproxy.ORIG_DST_CMSG_SPACE if self.follow_redirect else 0,
                socket.MSG_DONTWAIT)
        except OSError:  # nothing left, or an ICMP error for an earlier answer
            return False
        if size == 0:
            return True  # 4.34 ignores empty datagrams
        if size > MAX_UDP_PAYLOAD or flags & socket.MSG_TRUNC:
            log.debug("dropping a %d-byte datagram from %s", size, source)
            return True
        data = bytes(self._buffer[:size])
        self.count_received(size)
        if conn is not None:  # from the source, to the socket answering it under TPROXY
            conn.offer(data)
            return True
        origin = Destination(Address.parse(source[0]), source[1], Network.UDP)
        original = tproxy.original_destination_of_datagram(ancillary) \
            if self.follow_redirect else None
        if original is not None and tproxy.is_self(original, (self.port,)):
            log.debug("%s: a datagram from %s to this door itself; dropped", self.tag, origin)
            return True
        self._deliver(origin, original, data, selector)
        return True

    def _deliver(self, source: Destination, original: Optional[Destination], data: bytes,
                 selector) -> None:
        key = (source, original)
        evicted = None
        with self._lock:
            conn = self._conns.get(key)
            if conn is None:
                if len(self._conns) >= MAX_SOURCES:
                    evicted = self._quietest.pop(self._conns)[1]
                conn = PacketConn(self, key, self._reply_socket(source, original))
                self._conns[key] = conn
                is_new = True
            else:
                is_new = False
        if evicted is not None:
            log.info("%s: %d UDP sources; closing %s, the quietest, for %s", self.tag,
                     MAX_SOURCES, evicted.remote, source)
            evicted.abort()
            evicted.close()
        conn.offer(data)
        if is_new:
            if conn.reply_socket is not None:
                selector.register(conn.reply_socket, selectors.EVENT_READ, conn)
            self._spawn(conn)

    def _reply_socket(self, source: Destination,
                      original: Optional[Destination]) -> Optional[socket.socket]:
        """Under TPROXY, answers leave from the original destination (dokodemo.go)."""
        if original is None or self.mode != tproxy.TPROXY_TPROXY:
            return None
        try:
            return tproxy.bind_reply_socket(original, source, self.mark)
        except TransportError as e:
            log.warning("%s: %s; answering from the listening socket", self.tag, e)
            return None

    def _spawn(self, conn: PacketConn) -> None:
        session = Session(inbound_tag=self.tag, source=conn.remote)
        session.original_target = conn.original
        try:
            self.threads.spawn_steps(f"in-{session.name()}", self._process(session, conn))
        except RuntimeError:
            log.error("%s: no thread for the UDP source %s", session.name(), conn.remote)
            conn.abort()
            conn.close()

    def _process(self, session: Session, conn: PacketConn) -> Steps[None]:
        try:
            yield from self.proxy.process_steps(session, conn, self.dispatcher)
        except V2SyncError as e:
            log.info("%s: connection ends: %s", session.name(), e)
        finally:
            conn.close()

    def _clean(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [conn for conn in self._conns.values() if conn.is_idle(now)]
        for conn in idle:
            conn.close()  # the proxy reads None: its request side ends

    # -- the table -------------------------------------------------------------------
    def forget(self, key: Key, conn: PacketConn) -> None:
        with self._lock:
            if self._conns.get(key) is conn:
                del self._conns[key]
            reply = conn.reply_socket
            if reply is not None and not self._shut:
                self._retired.append(reply)
                reply = None
        if reply is not None:
            reply.close()

    def _release_retired(self, selector) -> None:
        """Reply sockets are unregistered and closed by the reading thread only."""
        with self._lock:
            retired, self._retired = self._retired, []
        for sock in retired:
            try:
                selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()

    def session_count(self) -> int:
        with self._lock:
            return len(self._conns)

    def send_to(self, data: bytes, dest: Destination) -> None:
        self._sock.sendto(data, peer_sockaddr(self._sock, dest))

    # -- shutdown --------------------------------------------------------------------
    def _shutdown(self, selector) -> None:
        with self._lock:
            conns = list(self._conns.values())
            self._shut = True
        self._release_retired(selector)
        for conn in conns:
            conn.abort()
            conn.close()
        self._sock.close()

    def close(self) -> None:
        """Stop; the reading thread closes the socket. As ``UdpListener.close``, an empty
        datagram to the socket's own address wakes its poll now, so a reload binds the port
        again at once; until then every inbound of the new config waits."""
        self._stop.set()
        wake_own_poll(self._sock)

    def close_unstarted(self) -> None:
        self._stop.set()
        self._sock.close()
