"""The Mux.cool client (v2ray ``common/mux/client.go``, ``app/proxyman/outbound/handler.go``).

An outbound with ``mux.enabled`` hands each link to its ``ClientManager`` instead of running
the proxy for it. The manager picks the first worker that is not full (fewer live
sub-connections than ``concurrency`` and fewer than 128 over its life), or starts one: a
worker is one run of the outbound's proxy to ``v1.mux.cool:9527`` (VMess and VLESS send
command 3 for it), one thread reading its frames, and a 16 s tick that closes it once it
has no sub-connection.

A sub-connection's request side runs in the thread that dispatched it (the dispatcher's
outbound thread): a New frame with the first payload if one comes within 100 ms, Keep
frames after, End at the end. Its response side is fed by the worker's reading thread.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, List, Optional

from v2sync.common.errors import (PipeClosed, PipeInterrupted, TransportError, V2SyncError)
from v2sync.common.mux.encoding import MUX_COOL_DESTINATION, Frame
from v2sync.common.mux.session import (FrameHandler, FrameReader, FrameWriter, MuxSession,
                                       SessionTable, SessionWriter, pump_steps)
from v2sync.common.net import ANY_IPV4, Destination, Network
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.transport.link import Link, new_link_pair
from v2sync.transport.pipe import EOF, ReadTimeout

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 128      # handler.go: MaxConnection, sub-connections per worker's life
IDLE_TICK = 16.0           # client.go monitor(): a worker with no session closes on the tick
PICK_ATTEMPTS = 16         # client.go ClientManager.Dispatch
FIRST_PAYLOAD_WAIT = 0.1   # client.go writeFirstPayload: CopyOnceTimeout 100 ms
DEFAULT_CONCURRENCY = 8    # infra/conf MuxConfig.Build: 0 or absent
MAX_CONCURRENCY = 1024     # handler.go: "invalid mux concurrency"

# The outbound's proxy on a link, as steps (OutboundHandler.run_proxy_steps).
RunProxy = Callable[[Session, Link], Steps[None]]


class ClientManager:
    def __init__(self, run_proxy: RunProxy, ctx, concurrency: int, name: str):
        self.run_proxy = run_proxy
        self.ctx = ctx
        self.concurrency = concurrency
        self.name = name
        self._lock = threading.Lock()
        self._workers: List[ClientWorker] = []
        self._serial = 0
        self._closed = False

    def dispatch_steps(self, session: Session, link: Link) -> Steps[None]:
        """Carry ``link`` as a sub-connection; returns when its request side has ended.
        Steps: a quiet sub-connection parks."""
        for _ in range(PICK_ATTEMPTS):
            worker = self._pick()
            mux_session = worker.allocate(link, session.destination().network is Network.UDP)
            if mux_session is not None:
                yield from worker.fetch_input_steps(session, mux_session)
                return
        raise TransportError("unable to find an available mux client")

    def _pick(self) -> "ClientWorker":
        with self._lock:
            if self._closed:
                raise TransportError("outbound closed")
            for worker in self._workers:
                if not worker.is_full():
                    return worker
            self._workers = [w for w in self._workers if not w.closed]
            self._serial += 1
            worker = ClientWorker(self, f"{self.name}-mux{self._serial}")
            self._workers.append(worker)
        worker.start()
        return worker

    def workers(self) -> List["ClientWorker"]:
        with self._lock:
            return [w for w in self._workers if not w.closed]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()


class ClientWorker(FrameHandler):
    def __init__(self, manager: ClientManager, name: str):
        ctx = manager.ctx
        limit = ctx.policy.pipe_limit(ctx.policy.for_level(0))
        # mux_side: frames we write (uplink) and read (downlink); proxy_side: the proxy's.
        self.mux_side, self.proxy_side = new_link_pair(limit, name)
        super().__init__(FrameWriter(self.mux_side.writer), SessionTable(), name)
        self.manager = manager
        self.ctx = ctx
        self.closed = False
        self._proxy_ended = False  # no new sub-connection; the reader drains what came
        self._close_lock = threading.Lock()
        self._tick = None

    def start(self) -> None:
        threads = self.ctx.threads
        try:
            threads.spawn_steps(f"{self.name}-conn", self._run_proxy_steps())
            threads.spawn_steps(f"{self.name}-read", self._read_steps())
        except RuntimeError:
            self.close()
            return
        self._arm_tick()

    # -- capacity (client.go IsFull / IsClosing) --------------------------------------------
    def is_full(self) -> bool:
        return (self.closed or self._proxy_ended or self.sessions.closed
                or self.sessions.count >= MAX_CONNECTIONS
                or self.sessions.size() >= self.manager.concurrency)

    def allocate(self, link: Link, packet: bool) -> Optional[MuxSession]:
        if self.is_full():
            return None
        return self.sessions.allocate(link, packet)

    # -- the worker's own threads -----------------------------------------------------------
    def _run_proxy_steps(self) -> Steps[None]:
        """The mux connection itself, through the outbound's proxy; steps: quiet, it
        parks as any relay does."""
        session = Session(inbound_tag="", source=Destination(ANY_IPV4, 0),
                          target=MUX_COOL_DESTINATION)
        try:
            yield from self.manager.run_proxy(session, self.proxy_side)
        finally:
            # Frames the server sent before it closed may still be queued: the reader goes
            # on to their end, then closes the worker (an interrupt here dropped them).
            self._proxy_ended = True
            self.proxy_side.writer.close()

    def _read_steps(self) -> Steps[None]:
        """Frames from the server until its EOF; steps: a quiet connection's reader parks."""
        reader = FrameReader(self.mux_side.reader, self.is_stream)
        try:
            while True:
                frame = yield from reader.next_steps()
                if frame is None:
                    break
                self.handle(frame)
        except V2SyncError as e:
            log.info("%s: mux connection ended: %s", self.name, e)
        finally:
            self.close()

    def on_new(self, frame: Frame) -> None:
        """A server never opens a session; 4.34 drops the frame and its data."""

    def _arm_tick(self) -> None:
        self._tick = self.ctx.timers.new_timer(IDLE_TICK, self._on_tick)

    def _on_tick(self) -> None:
        if self.closed:
            return
        if self.ctx.timers.expiring or self.sessions.close_if_empty():
            self.close()
            return
        self._arm_tick()

    def close(self) -> None:
        """End the connection and every sub-connection on it (idempotent). Each one's
        response ends after what has arrived, as client.go's ``SessionManager.Close``
        closes (not interrupts) their output; each request side ends with its client."""
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
        for session in self.sessions.close():
            session.link.writer.close()
        self.mux_side.writer.close()    # the proxy sends what is queued, then ends
        self.mux_side.reader.interrupt()
        if self._tick is not None:
            self._tick.cancel()

    # -- one sub-connection's request side (client.go fetchInput) -----------------------------
    def fetch_input_steps(self, session: Session, mux_session: MuxSession) -> Steps[None]:
        writer = SessionWriter(self.out, mux_session, session.target)
        try:
            if not self._write_first(mux_session, writer):
                return
            sent = yield from pump_steps(mux_session, writer)
            if not sent:
                log.info("%s: sub-connection %d failed", self.name, mux_session.id)
        finally:
            # client.go: the session closes with its request side (no half-close in
            # Mux.cool): its response pipe ends after what has arrived.
            mux_session.link.writer.close()
            self.sessions.remove(mux_session)

    def _write_first(self, mux_session: MuxSession, writer: SessionWriter) -> bool:
        """New with the first payload if it comes within 100 ms, else New alone."""
        reader = mux_session.link.reader
        try:
            try:
                first = reader.read(timeout=FIRST_PAYLOAD_WAIT)
            except ReadTimeout:
                writer.write_meta_only()
                return True
            if first is EOF:
                writer.write_meta_only()
                writer.close()
                return False
            writer.write([first])
            return True
        except (PipeClosed, PipeInterrupted) as e:
            log.info("%s: sub-connection %d failed: %s", self.name, mux_session.id, e)
            reader.interrupt()
            writer.close(error=True)
            return False
