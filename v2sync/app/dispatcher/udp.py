"""Datagram sessions for packet-oriented inbounds (v2ray ``transport/internet/udp/dispatcher.go``).

A SOCKS UDP relay receives datagrams for many targets on one socket. Each (client, target)
pair gets its own dispatched link, kept while datagrams flow; one reader per pair (a task
that parks while the target is quiet) sends the target's answers back to the client.
Datagrams are dropped, never queued without bound, when a pipe is full; past the table's
cap a new pair closes the one quiet longest.
"""
from __future__ import annotations

import heapq
import logging
import threading
from collections import deque
from operator import itemgetter
from typing import Callable, Deque, Dict, Generic, Tuple, TypeVar

from v2sync.common.errors import TransportError
from v2sync.common.net import Destination
from v2sync.common.session import Session
from v2sync.features.proxy import ProxyContext
from v2sync.common.task import Steps
from v2sync.features.routing import Dispatcher
from v2sync.transport.copy import read_all_steps
from v2sync.transport.link import Link
from v2sync.transport.pipe import EOF

log = logging.getLogger(__name__)

MAX_UDP_SESSIONS = 1024
# Entries a full table's scan keeps, quietest first, for the evictions after it: a burst of
# new sources past the cap scanned the whole table for each one.
EVICTION_BATCH = 64
# 4.34 transport/internet/udp/dispatcher.go: a (client, target) link goes after 4 s without
# an answer. 4.34 counts only answers, so a one-way flow is re-dispatched every 4 s (a new
# outbound, a new source port); here datagrams either way keep the link.
UDP_SESSION_IDLE = 4.0
Respond = Callable[[Destination, bytes], None]
Key = Tuple[Destination, Destination]
K = TypeVar("K")
V = TypeVar("V")


class _Entry:
    def __init__(self, link: Link, timer):
        self.link = link
        self.timer = timer


class QuietestFirst(Generic[K, V]):
    """Takes the entry quiet longest out of a full table: a new session takes its room, as
    4.34 has no cap at all; refusing the new one let a sender of datagrams from many forged
    sources (or to many targets) lock every other client out.

    Exact, as a scan of the whole table for each would be, with one scan per
    EVICTION_BATCH evictions: a scan keeps the quietest entries with their last activity
    then. Later, the first kept one that is still in the table and has been quiet since is
    the quietest of all: every other entry was as busy at the scan or has been since (a
    new one too: activity is a monotonic time, and a new entry's starts at its making).
    The caller holds the table's lock; activity may move without it. Kept entries are
    known by key and ``id``, so a closed one is not held alive here."""

    __slots__ = ("_last_activity", "_kept")

    def __init__(self, last_activity: Callable[[V], float]):
        self._last_activity = last_activity
        self._kept: Deque[Tuple[float, K, int]] = deque()

    def pop(self, table: Dict[K, V]) -> Tuple[K, V]:
        """Remove and return the quietest entry of ``table`` (not empty)."""
        kept = self._kept
        while kept:
            stamp, key, ident = kept.popleft()
            value = table.get(key)
            if value is not None and id(value) == ident and self._last_activity(value) == stamp:
                return key, table.pop(key)
        self._scan(table)
        _, key, _ = kept.popleft()  # just scanned: the quietest now
        return key, table.pop(key)

    def _scan(self, table: Dict[K, V]) -> None:
        last_activity = self._last_activity
        entries = ((last_activity(value), key, id(value)) for key, value in table.items())
        self._kept.extend(heapq.nsmallest(EVICTION_BATCH, entries, key=itemgetter(0)))


def _last_activity(entry: "_Entry") -> float:
    return entry.timer.last


class UdpSessionTable:
    def __init__(self, dispatcher: Dispatcher, ctx: ProxyContext, inbound_tag: str, level: int,
                 email: str):
        self.dispatcher = dispatcher
        self.ctx = ctx
        self.inbound_tag = inbound_tag
        self.level = level
        self.email = email  # every session's user (Trojan, Shadowsocks; '' for SOCKS): routing, stats
        self.policy = ctx.policy.for_level(level)
        self._entries: Dict[Key, _Entry] = {}
        self._quietest: QuietestFirst[Key, _Entry] = QuietestFirst(_last_activity)
        self._lock = threading.Lock()

    def send(self, source: Destination, dest: Destination, payload: bytes, respond: Respond) -> None:
        key = (source, dest)
        evicted = None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                if len(self._entries) >= MAX_UDP_SESSIONS:
                    evicted = self._quietest.pop(self._entries)
                entry = self._open(key, respond)
        if evicted is not None:
            log.info("%s: %d UDP sessions; closing %s, the quietest, for %s",
                     self.inbound_tag or "-", MAX_UDP_SESSIONS, evicted[0][1], dest)
            self._drop(*evicted)
        entry.timer.update()
        try:
            if not entry.link.writer.try_write(payload):
                log.debug("udp pipe to %s full; datagram dropped", dest)
        except TransportError:
            self._drop(key, entry)

    def _open(self, key: Key, respond: Respond) -> _Entry:
        source, dest = key
        session = Session(inbound_tag=self.inbound_tag, source=source, user_email=self.email,
                          user_level=self.level, source_with_network=True)
        link = self.dispatcher.dispatch(session, dest)
        entry = _Entry(link, None)
        entry.timer = self.ctx.timers.new_timer(UDP_SESSION_IDLE, lambda: self._drop(key, entry))
        self._entries[key] = entry
        self.ctx.threads.spawn_steps(f"udp-{session.name()}", self._pump(key, entry, respond))
        return entry

    def _pump(self, key: Key, entry: _Entry, respond: Respond) -> Steps[None]:
        """Target -> client: one pipe chunk is one datagram. Steps: it parks while the
        target is quiet, so a pair waiting for answers holds no thread."""
        try:
            while True:
                chunks = yield from read_all_steps(entry.link.reader)
                if chunks is EOF:
                    return
                entry.timer.update()
                for chunk in chunks:
                    respond(key[1], chunk)
                del chunks  # answered: not kept alive while the next read waits
        except TransportError:
            pass  # interrupted: the session expired or the outbound failed
        finally:
            self._drop(key, entry)

    def _drop(self, key: Key, entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
        entry.timer.cancel()
        entry.link.interrupt()

    def close(self) -> None:
        with self._lock:
            entries = list(self._entries.items())
        for key, entry in entries:
            self._drop(key, entry)
