"""The Mux.cool server (v2ray ``common/mux/server.go``).

``MuxServer`` wraps an inbound's dispatcher: a dispatch to ``v1.mux.cool`` (any port)
returns the inbound's end of a fresh link whose other end a ``ServerWorker`` reads as
frames; anything else goes to the dispatcher unchanged. Each New frame is dispatched through
that same dispatcher with a session copied from the mux connection's (inbound tag, source,
user, sniffing), so routing, sniffing and the access log apply to every sub-connection.

A protocol that carries Mux.cool (VMess command 3, VLESS command 3) only has to dispatch
``Destination(MUX_COOL_ADDRESS, 0)`` through the dispatcher it was given and relay the
returned link like any other.
"""
from __future__ import annotations

import logging
import threading
from typing import List

from v2sync.common.errors import PipeInterrupted, V2SyncError
from v2sync.common.mux.encoding import Frame, is_mux_destination
from v2sync.common.mux.session import (FrameHandler, FrameReader, FrameWriter, MuxSession,
                                       SessionTable, SessionWriter, pump_steps)
from v2sync.common.net import Destination, Network
from v2sync.common.session import Session
from v2sync.common.task import Steps, ThreadGroup
from v2sync.transport.link import Link, new_link_pair

log = logging.getLogger(__name__)


class MuxServer:
    """A dispatcher that serves ``v1.mux.cool`` itself (``features.routing.Dispatcher``)."""

    def __init__(self, dispatcher, policy, threads: ThreadGroup):
        self.dispatcher = dispatcher
        self.policy = policy
        self.threads = threads

    def dispatch(self, session: Session, dest: Destination, early: bytes = b"",
                 start_here: bool = False) -> Link:
        if not is_mux_destination(dest):
            return self.dispatcher.dispatch(session, dest, early, start_here)
        session.target = dest
        limit = self.policy.pipe_limit(self.policy.for_level(session.user_level))
        inbound_side, worker_side = new_link_pair(limit, f"{session.name()}-mux")
        inbound_side.writer.write(early)  # as the dispatcher does: before the worker starts
        worker = ServerWorker(self.dispatcher, session, worker_side, self.threads)
        try:
            self.threads.spawn_steps(f"mux-{session.name()}", worker.run_steps())
        except RuntimeError:
            log.error("%s: cannot start the mux worker", session.name())
            inbound_side.interrupt()
        return inbound_side


class ServerWorker(FrameHandler):
    def __init__(self, dispatcher, session: Session, link: Link, threads: ThreadGroup):
        super().__init__(FrameWriter(link.writer), SessionTable(), session.name() + "-mux")
        self.dispatcher = dispatcher
        self.session = session
        self.link = link
        self.threads = threads
        self._lock = threading.Lock()
        self._pumps = 0          # sub-connections still sending their data
        self._reading = True     # the frame reader has not ended yet
        self._keep_open = False  # after garbage: leave the end to the inbound's relay
        self._ended: List[MuxSession] = []  # live when the reader ended: answers still going
        self._gone = False  # the downlink is gone: every sub-connection ends (once)

    def run_steps(self) -> Steps[None]:
        """Frames until the client's EOF; steps: a quiet mux connection's reader parks
        (a server with 1,000 idle mux connections held 1,000 threads in their reads)."""
        reader = FrameReader(self.link.reader, self.is_stream)
        try:
            while True:
                frame = yield from reader.next_steps()
                if frame is None:
                    break  # the client ended the mux connection cleanly
                self.handle(frame)
        except PipeInterrupted:  # the connection itself is gone: so is every sub-connection
            self.end_all()
        except V2SyncError as e:
            # Garbage, or a failed dispatch: as server.go, stop reading (the client's next
            # write fails) and end each sub-connection's request side; answers still go out.
            log.info("%s: mux connection ended: %s", self.name, e)
            self.link.reader.interrupt()
            self._keep_open = True  # 4.34 never closes the downlink: the client's next
            # write fails, or the connection's inactivity timer ends it
        finally:
            with self._lock:
                self._ended = self.sessions.close()
                gone = self._gone
            for session in self._ended:
                if gone:  # their answers go nowhere
                    session.link.interrupt()
                else:
                    session.link.writer.close()  # each request side ends; answers go on
            self._reader_done()

    def on_new(self, frame: Frame) -> None:
        target = frame.destination()
        child = Session(inbound_tag=self.session.inbound_tag, source=self.session.source,
                        user_email=self.session.user_email, user_level=self.session.user_level,
                        sniffing=self.session.sniffing, source_with_network=True)
        log.debug("%s: sub-connection %d to %s", self.name, frame.session_id, target)
        link = self.dispatcher.dispatch(child, target)
        session = MuxSession(frame.session_id, link, target.network is Network.UDP)
        if not self.sessions.add(session):
            link.interrupt()
            return
        self._start_pump(session, child)
        if frame.data is not None:
            self.deliver(session, frame.data, first=True)

    def _start_pump(self, session: MuxSession, child: Session) -> None:
        with self._lock:
            self._pumps += 1
        writer = SessionWriter(self.out, session)

        def respond() -> Steps[None]:
            try:
                sent = yield from pump_steps(session, writer)
                if not sent and self.link.writer.is_closed:
                    self._downlink_gone()
            finally:
                self.sessions.remove(session)
                self._pump_done()

        try:
            self.threads.spawn_steps(f"mux-{child.name()}", respond())
        except RuntimeError:
            self._pump_done()
            raise V2SyncError("cannot start a mux sub-connection thread") from None

    def _downlink_gone(self) -> None:
        """An answer could not go out because the mux connection's downlink is gone (the
        client vanished: the inbound's write failed and its relay aborted the link): every
        sub-connection ends now, as in 4.34, where they all run in the mux connection's
        context, which ends with it. Their upstreams would otherwise wait out downlinkOnly."""
        with self._lock:
            if self._gone:
                return  # every sub-connection whose answer then fails lands here: once is
                # enough (3,000 of them interrupting each other's 3,000 took ~60 s)
            self._gone = True
            ended = self._ended
        log.debug("%s: mux connection gone; ending every sub-connection", self.name)
        self.end_all()
        for session in ended:  # the client's EOF came first: their answers go nowhere now
            session.link.interrupt()

    def _pump_done(self) -> None:
        with self._lock:
            self._pumps -= 1
            last = self._pumps == 0 and not self._reading
        if last:
            self._finish()

    def _reader_done(self) -> None:
        with self._lock:
            self._reading = False
            last = self._pumps == 0
        if last:
            self._finish()

    def _finish(self) -> None:
        """Every answer is out and the client sent all it will: the downlink ends (4.34
        leaves that to the inbound's timers)."""
        if not self._keep_open:
            self.link.writer.close()
