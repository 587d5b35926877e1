"""Datagram sessions for packet-oriented inbounds (v2ray ``transport/internet/udp/dispatcher.go``).

A SOCKS UDP relay receives datagrams for many targets on one socket. Each (client, target)
pair gets its own dispatched link, kept while datagrams flow; one reader per pair (a task
that parks while the target is quiet) sends the target's answers back to the client.
Datagrams are dropped, never queued without bound, when a pipe is full; past the table's
cap a new pair closes the one quiet longest.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, Tuple, TypeVar

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


def pop_quietest(table: Dict[K, V], last_activity: Callable[[V], float]) -> Tuple[K, V]:
    """Remove and return the entry quiet longest. A UDP table is full: a new session takes
    its room, as 4.34 has no cap at all; refusing the new one let a sender of datagrams
    from many forged sources (or to many targets) lock every other client out."""
    key = min(table, key=lambda k: last_activity(table[k]))
    return key, table.pop(key)


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
        self._lock = threading.Lock()

    def send(self, source: Destination, dest: Destination, payload: bytes, respond: Respond) -> None:
        key = (source, dest)
        evicted = None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                if len(self._entries) >= MAX_UDP_SESSIONS:
                    evicted = pop_quietest(self._entries, _last_activity)
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
