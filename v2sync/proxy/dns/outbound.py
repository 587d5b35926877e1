"""The dns outbound (v2ray ``proxy/dns/dns.go``).

Messages come from the link one per chunk (UDP) or length-prefixed (TCP). A and AAAA
queries are answered from the built-in DNS (``ctx.dns``) right here; any other message goes
to the upstream: the original destination with the settings' network/address/port put in,
dialed on the first message that needs it (4.34's ``outboundConn``). The upstream's answers
come back the same way. Both directions (and the lookup pool) write answers to the link;
a pipe write queues a TCP frame whole, so they need no lock.

4.34 answers each IP query in its own goroutine; here an answer at hand (hosts, the cache)
is given at once, and any other query goes to the outbound's lookup pool (``_LookupPool``:
MAX_LOOKUP_THREADS threads over all sessions, a session's first query before the others,
newest first), at most MAX_LOOKUPS of one session at once (``_Lookups``). They were answered in turn on the
request side, so a client that asks from one socket or connection (a forwarding resolver
behind a DNS hijack: dnsmasq, systemd-resolved) waited the whole deadline of a name that
is never answered, 4 s a server, before each name behind it (4.34: 10 ms; found by a
review).
"""
from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from typing import Callable, Deque, Iterator, List, Optional, Tuple, Union

from v2sync.app.dns.server import DnsAnswerError, NeedsNetwork
from v2sync.common.errors import ProtocolError, TransportError
from v2sync.common.net import Destination, Network
from v2sync.common.protocol.packets import PacketStream
from v2sync.common.registry import OUTBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Latch, Steps, ThreadGroup, Wait, outside_slot
from v2sync.features.proxy import ProxyContext
from v2sync.proxy.dns import encoding as enc
from v2sync.proxy.dns.config import DnsOutboundConfig
from v2sync.proxy.relay import Parkable, run_relay_steps
from v2sync.transport.copy import PARK_AFTER, parkable_reads, read_all_steps
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.counting import adder
from v2sync.transport.internet.dialer import candidates, dial_once
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.internet.readiness import ReadWaiter
from v2sync.transport.internet.udp import (MAX_UDP_PAYLOAD, dial_udp, recv_or_park,
                                          shutdown_udp)
from v2sync.transport.link import Link
from v2sync.transport.pipe import EOF

log = logging.getLogger(__name__)

STRATEGY_FOR = {enc.wire.TYPE_A: "UseIPv4", enc.wire.TYPE_AAAA: "UseIPv6"}
# IP queries of one session answered at once; past it the request side waits for one to
# end (a session is one client's socket or connection). 4.34 sets no limit; with 8, a name
# behind 8 that are never answered still waited a deadline (found by a review).
MAX_LOOKUPS = 32
# How long a session's end waits for the answers still being looked up (each lookup ends
# within the DNS's own deadlines, 4 s a server).
LOOKUPS_DRAIN = 30.0


@OUTBOUNDS.register("dns")
class DnsOutbound:
    config_type = DnsOutboundConfig

    def __init__(self, settings: DnsOutboundConfig, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.client = StreamClient.for_handler(handler_config)
        self._pool = _LookupPool(ctx.threads)

    def upstream_of(self, target: Destination) -> Destination:
        s = self.settings
        return Destination(s.address or target.address, s.port or target.port,
                           s.network or target.network)

    def process_steps(self, session: Session, link: Link) -> Steps[None]:
        """Steps: both directions park while quiet (a query session waiting for the
        client's next message, or the upstream's answer, holds no thread; a DNS hijack's
        sessions, one per client source port, held two each for their 8 s)."""
        target = session.target
        if target is None:
            raise TransportError("invalid outbound")
        upstream = _Upstream(self.upstream_of(target), self.client, self.ctx.readiness)
        messages = _MessageIO(link, target.network)
        policy = self.ctx.policy.for_level(0)
        own = self._own_link(session)
        lookups = _Lookups(self._pool, self.ctx.timers, session.name())

        def abort() -> None:
            upstream.shutdown()
            link.interrupt()

        def request(timer) -> Steps[None]:
            try:
                while True:
                    batch = yield from messages.read_steps()
                    if batch is None:
                        break
                    for message in batch:
                        timer.update()
                        if own:
                            upstream.send(message)
                        else:
                            self._handle(message, messages, upstream, lookups, timer)
                # The answers still due go out before the end.
                yield from lookups.drain_steps(LOOKUPS_DRAIN)
            finally:
                upstream.close_input()

        def response(timer) -> Steps[None]:
            for message in upstream.answers():
                if isinstance(message, Wait):
                    yield message  # quiet: parked
                    continue
                timer.update()
                messages.write(message)

        try:
            error = yield from run_relay_steps(self.ctx, session.name(), policy, None, abort,
                                               Parkable(request), Parkable(response))
        finally:
            lookups.close()
            upstream.close()
        if error is not None:
            log.debug("%s: dns connection ends: %s", session.name(), error)

    def _own_link(self, session: Session) -> bool:
        """The DNS's own query (4.34's ``isOwnLink``: the inbound tag is ``dns.tag``) is sent
        on as it is: answered from the DNS, it would ask the DNS again, without end."""
        dns = self.ctx.dns
        return session.internal or (dns is not None and bool(dns.config.tag)
                                    and session.inbound_tag == dns.config.tag)

    def _handle(self, message: bytes, messages: "_MessageIO", upstream: "_Upstream",
                lookups: "_Lookups", timer) -> None:
        query = enc.parse_ip_query(message)
        if query is None or self.ctx.dns is None:
            upstream.send(message)
            return
        try:
            answer = self._answer(query, cached_only=True)
        except NeedsNetwork:
            lookups.run(lambda: self._answer_to(query, messages, timer))
            return
        self._deliver(query, answer, messages, timer)

    def _answer_to(self, query: enc.IPQuery, messages: "_MessageIO", timer) -> None:
        """In the outbound's pool: the answer goes only if the session's pipe has room.
        A pooled thread waiting on one client's pipe is taken from every session: four
        TCP clients that never read their answers held all 128, and nobody else's name
        was looked up any more (found by a review). Such a client loses answers it does
        not read; the session's own thread still waits for room (``_deliver``)."""
        self._deliver(query, self._answer(query), messages, timer, wait=False)

    @staticmethod
    def _deliver(query: enc.IPQuery, answer: Optional[bytes], messages: "_MessageIO",
                 timer, wait: bool = True) -> None:
        if answer is None:
            return
        try:
            if not messages.write(answer, wait):
                log.debug("dns: answer for %s dropped: the client is not reading", query.name)
                return
        except TransportError as e:  # the session ended meanwhile (its pipe closed)
            log.debug("dns: answer for %s not delivered: %s", query.name, e)
            return
        timer.update()

    def _answer(self, query: enc.IPQuery, cached_only: bool = False) -> Optional[bytes]:
        """handleIPQuery: the addresses, or the server's rcode; nothing on other errors.
        ``cached_only``: ``NeedsNetwork`` unless the answer is at hand (a hosts entry, the
        cache), which is then given in the session's thread: only a lookup that asks a
        server takes a pooled thread (and two hand-overs)."""
        rcode = 0
        try:
            found = self.ctx.dns.lookup(query.name, STRATEGY_FOR[query.qtype], cached_only)
        except DnsAnswerError as e:
            found, rcode = (), e.rcode
        except (TransportError, ValueError) as e:
            log.info("dns: ip query for %s failed: %s", query.name, e)
            return None
        try:
            return enc.encode_ip_answer(query, found, rcode)
        except ProtocolError as e:  # a name the codec cannot write back (not ASCII): it
            # ended the session's relay, with the queries behind it (found by a review)
            log.info("dns: cannot answer %s: %s", query.name, e)
            return None


class _MessageIO:
    """DNS messages on the link: one per chunk (UDP) or 2-byte length-prefixed (TCP)."""

    def __init__(self, link: Link, network: Network):
        self.link = link
        self.is_tcp = network is Network.TCP
        self._stream: Optional[PacketStream[bytes]] = (
            PacketStream(enc.parse_tcp_message) if self.is_tcp else None)

    def read_steps(self) -> Steps[Optional[List[bytes]]]:
        """The whole messages that came, or None at the link's end. Steps: it parks
        while there are none."""
        chunks = yield from read_all_steps(self.link.reader)
        if chunks is EOF:
            return None
        stream = self._stream
        if stream is None:
            return chunks
        return [message for chunk in chunks for message in stream.feed(chunk)]

    def write(self, message: bytes, wait: bool = True) -> bool:
        """Queue one message; without ``wait``, only if there is room now (False if not)."""
        if not message and self.is_tcp:
            return True  # 4.34's TCPWriter writes no frame for an empty message
        data = enc.frame_tcp_message(message) if self.is_tcp else message
        # A pipe write queues its chunk whole, so writers from several threads (the
        # session's, the pool's) never interleave a TCP frame, and need no lock of
        # their own: one held while a writer waits for room made the others wait too.
        if not wait:
            return self.link.writer.try_write(data, POOLED_ANSWER_SLACK)
        self.link.writer.write(data)
        return True


class _Lookups:
    """A session's IP queries, each answered by the outbound's lookup pool (4.34: a
    goroutine each), at most MAX_LOOKUPS of them in the pool at once."""

    def __init__(self, pool: "_LookupPool", timers, name: str):
        self._pool = pool
        self._timers = timers
        self._name = name
        self._changed = threading.Condition()
        self._running = 0  # in the pool: running or waiting there
        self._drained: Optional[Latch] = None
        self._closed = False  # the session has ended: lookups still waiting are skipped

    def run(self, answer: Callable[[], None]) -> None:
        """``answer()`` through the pool; waits while MAX_LOOKUPS of this session are in
        it. With no room within LOOKUPS_DRAIN, it runs here, in turn as before."""
        with self._changed:
            room = outside_slot(self._changed.wait_for, lambda: self._running < MAX_LOOKUPS,
                                LOOKUPS_DRAIN)
            if room:
                self._running += 1
                busy = self._running > 1
        if not room:
            answer()
            return
        self._pool.submit(lambda: None if self._closed else answer(), self._done, self._name,
                          busy)

    def close(self) -> None:
        self._closed = True

    def _done(self) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify_all()
            drained = self._drained if not self._running else None
        if drained is not None:
            drained.set()

    def drain_steps(self, timeout: float) -> Steps[None]:
        """Until every answer begun has been written (or ``timeout``), parked."""
        with self._changed:
            if not self._running:
                return
            drained = self._drained = Latch()
        timer = self._timers.new_timer(timeout, drained.set)
        try:
            yield drained
        finally:
            timer.cancel()


# IP queries the dns outbound answers at once, over all its sessions: each blocks a thread
# in the built-in DNS for up to its deadline (4 s a server). A DNS hijack's sessions are
# one per client source port, so the per-session MAX_LOOKUPS bounded nothing: 1,500
# sources asking for unknown names held 2,139 threads and +120 MiB for 4 s (4.34: +0;
# found by a review). Past it, queries wait, newest first, and the oldest waiting one is
# dropped past MAX_WAITING_LOOKUPS (its client asks again): under such a flood a fresh
# query is answered next, not after every stale one.
MAX_LOOKUP_THREADS = 128
MAX_WAITING_LOOKUPS = 1024
# Past the session's pipe limit, what its pooled answers may still queue: a client that
# reads is never short of an answer because several came at once (a pipe of bufferSize 0,
# 4.34's default on arm and mips, is over its limit whenever a byte waits: one answer in
# ten was dropped for a resolver pipelining over TCP; found by a review). Its 32 lookups'
# answers of 4 KiB each; only a client that does not read loses those past it.
POOLED_ANSWER_SLACK = MAX_LOOKUPS * 4096
Job = Tuple[Callable[[], None], Callable[[], None]]


class _LookupPool:
    """The dns outbound's lookup threads: at most MAX_LOOKUP_THREADS, each taking the
    newest waiting lookup when it is done with one, a session's first before the rest.

    A query from a session with lookups in the pool already waits behind every first
    one: newest first alone let one session that kept asking (each answer freeing its room
    for the next query) go ahead of every other session for as long as it liked (found
    by a review)."""

    def __init__(self, threads: ThreadGroup):
        self._threads = threads
        self._lock = threading.Lock()
        self._running = 0
        self._firsts: Deque[Job] = deque()  # from sessions with none in the pool then
        self._more: Deque[Job] = deque()    # from sessions with others in the pool

    def submit(self, answer: Callable[[], None], done: Callable[[], None], name: str,
               busy: bool = False) -> None:
        """``answer()`` then ``done()`` in a pool thread, or ``done()`` alone if the lookup
        is dropped unanswered. ``busy``: the session has others in the pool."""
        dropped = None
        with self._lock:
            start = self._running < MAX_LOOKUP_THREADS
            if start:
                self._running += 1
            else:
                (self._more if busy else self._firsts).append((answer, done))
                if len(self._firsts) + len(self._more) > MAX_WAITING_LOOKUPS:
                    dropped = (self._more or self._firsts).popleft()
        if dropped is not None:
            log.debug("dns: %d lookups waiting; the oldest dropped", MAX_WAITING_LOOKUPS)
            dropped[1]()
        if not start:
            return
        try:
            self._threads.spawn(f"{name}-lookup", lambda: self._serve(answer, done))
        except RuntimeError:  # "can't start new thread": answered here, in turn
            self._serve(answer, done)

    def _serve(self, answer: Callable[[], None], done: Callable[[], None]) -> None:
        job: Optional[Job] = (answer, done)
        while job is not None:
            try:
                job[0]()
            finally:
                job[1]()
            job = self._next()

    def _next(self) -> Optional[Job]:
        with self._lock:
            waiting = self._firsts or self._more
            if waiting:
                return waiting.pop()  # the newest: its client still waits for it
            self._running -= 1
            return None


class _Upstream:
    """The connection non-IP messages go to, dialed when the first one needs it."""

    def __init__(self, dest: Destination, client: StreamClient, waiter: ReadWaiter):
        self.dest = dest
        self.client = client
        self.waiter = waiter
        self._lock = threading.Lock()
        self._ready = Latch()  # set once dialed, failed or shut down
        self._sock: Optional[socket.socket] = None
        self._conn: Optional[Connection] = None
        self._closed = False
        # Datagrams count on the outbound's counters whole (a TCP upstream is a counted
        # connection already), as 4.34's counting connection does.
        self._count_sent, self._count_received = (adder(c) for c in client.counters)

    def send(self, message: bytes) -> None:
        if self._sock is None and self._conn is None and not self._dial_first():
            return
        try:
            if self._sock is not None:
                self._count_sent(self._sock.send(message))
            elif self._conn is not None:
                self._conn.write(enc.frame_tcp_message(message))
        except (OSError, TransportError) as e:
            log.debug("dns: sending to %s failed: %s", self.dest, e)

    def _dial_first(self) -> bool:
        """Dial for the first message, outside the lock: ``shutdown`` takes it from the
        timer wheel's one thread, which a dial to an upstream that drops SYNs held for
        16 s, and every other timer with it. ``send`` has one caller (the session's
        request side), so there is one dial."""
        with self._lock:
            if self._closed:
                return False
        try:
            sock, conn = self._dial()
        except TransportError as e:
            # dns.go: the dial failure is logged and the message dropped
            log.warning("dns: failed to dial %s: %s", self.dest, e)
            self._ready.set()
            return False
        with self._lock:
            closed = self._closed
            if not closed:
                self._sock, self._conn = sock, conn
        self._ready.set()
        if closed:  # shut down while dialing: nobody reads it now
            for dialed in (sock, conn):
                if dialed is not None:
                    dialed.close()
        return not closed

    def _dial(self) -> Tuple[Optional[socket.socket], Optional[Connection]]:
        if self.dest.network is Network.UDP:
            return (self.client.chained_datagrams(self.dest)
                    or dial_udp(candidates(self.dest)[0], self.client.source,
                                self.client.sockopt)), None
        conn = dial_once(self.dest, self.client)
        conn.settimeout(None)
        return None, conn

    def answers(self) -> Iterator[Union[bytes, Wait]]:
        """Messages from the upstream until it ends (or nothing was ever sent); a ``Wait``
        for the caller to yield while there are none."""
        if not self._ready.is_set():
            yield self._ready
        if self._sock is not None:
            yield from self._datagrams(self._sock)
        elif self._conn is not None:
            yield from self._stream(self._conn)

    def _datagrams(self, sock: socket.socket) -> Iterator[Union[bytes, Wait]]:
        while True:
            try:
                data = yield from recv_or_park(sock, MAX_UDP_PAYLOAD + 1, self.waiter,
                                               PARK_AFTER, self._is_closed)
            except OSError:
                return
            if not data:
                return  # shut down
            self._count_received(len(data))
            if len(data) <= MAX_UDP_PAYLOAD:
                yield data

    def _stream(self, conn: Connection) -> Iterator[Union[bytes, Wait]]:
        stream: PacketStream[bytes] = PacketStream(enc.parse_tcp_message)
        try:
            for data in parkable_reads(conn, None, self.waiter):
                if isinstance(data, Wait):
                    yield data
                    continue
                yield from stream.feed(data)
        except TransportError:
            return

    def _is_closed(self) -> bool:
        return self._closed

    def close_input(self) -> None:
        """The client is done: without an upstream, nothing will ever answer."""
        with self._lock:
            idle = self._sock is None and self._conn is None
        if idle:
            self._ready.set()

    def shutdown(self) -> None:
        """End it: a parked reader wakes and ends. The sockets stay open for ``close``,
        once that reader is gone (a socket closed while registered in the ReadWaiter's
        selector would leave its entry there)."""
        with self._lock:
            self._closed = True
            sock, conn = self._sock, self._conn
        self._ready.set()
        if sock is not None:
            shutdown_udp(sock)
        if conn is not None:
            conn.abort()

    def close(self) -> None:
        self.shutdown()
        if self._sock is not None:
            self._sock.close()
        if self._conn is not None:
            self._conn.close()
