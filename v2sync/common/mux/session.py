"""What both ends of a Mux.cool connection share (v2ray ``common/mux/session.go``,
``writer.go`` and the Keep/End halves of ``client.go`` and ``server.go``).

A sub-connection (``MuxSession``) holds a ``Link`` seen from the mux side: ``link.writer``
takes the data that arrives in its frames, ``link.reader`` gives the data to send out as
frames. The worker that reads the mux connection calls ``FrameHandler.handle`` per frame;
each sub-connection's own thread runs ``pump`` to send its data.
"""
from __future__ import annotations

import abc
import logging
import threading
from typing import Callable, Dict, List, Optional, Sequence

from v2sync.common.errors import PipeClosed, PipeInterrupted, RemoteProtocolError, TransportError
from v2sync.common.mux.encoding import (MAX_PACKET_SIZE, Frame, Status, encode_end, encode_frame,
                                        parse_frame, split_stream)
from v2sync.common.net import Destination
from v2sync.common.task import Steps, drive
from v2sync.transport.copy import read_all_steps
from v2sync.transport.link import Link
from v2sync.transport.pipe import EOF, Pipe

log = logging.getLogger(__name__)

MAX_SESSION_ID = 0xFFFF


class MuxSession:
    __slots__ = ("id", "link", "packet", "ended")

    def __init__(self, session_id: int, link: Link, packet: bool):
        self.id = session_id
        self.link = link
        self.packet = packet  # UDP: one datagram per frame
        self.ended = False  # its End went out (FrameWriter.end: once)


class SessionTable:
    """The live sub-connections of one mux connection (session.go ``SessionManager``).

    ``count`` is every session ever added (4.34's MaxConnection counts it); ``closed`` is
    final: a closed table takes no new session.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: Dict[int, MuxSession] = {}
        # Sessions a New for their live id replaced: no frame reaches them any more, but
        # they run on until they end or the mux connection does (4.34 runs every
        # sub-connection in the connection's context), so close() hands them out too.
        self._replaced: List[MuxSession] = []
        self.count = 0
        self.closed = False

    def allocate(self, link: Link, packet: bool) -> Optional[MuxSession]:
        """A client session with the next id (1, 2, 3...), or None once closed or out of ids."""
        with self._lock:
            if self.closed or self.count >= MAX_SESSION_ID:
                return None
            self.count += 1
            session = MuxSession(self.count, link, packet)
            self._sessions[session.id] = session
            return session

    def add(self, session: MuxSession) -> bool:
        """A server session under the peer's id (a New for a live id replaces it, as 4.34)."""
        with self._lock:
            if self.closed:
                return False
            self.count += 1
            replaced = self._sessions.get(session.id)
            if replaced is not None:
                self._replaced.append(replaced)
            self._sessions[session.id] = session
            return True

    def get(self, session_id: int) -> Optional[MuxSession]:
        with self._lock:
            return self._sessions.get(session_id)

    def remove(self, session: MuxSession) -> bool:
        """Forget ``session`` if it is still the one under its id; True if it was."""
        with self._lock:
            if self._sessions.get(session.id) is session:
                del self._sessions[session.id]
                return True
            if session in self._replaced:  # it ended: nothing to end at the close
                self._replaced.remove(session)
            return False

    def size(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close_if_empty(self) -> bool:
        with self._lock:
            if self._sessions:
                return self.closed
            self.closed = True
            return True

    def close(self) -> List[MuxSession]:
        """Close the table; returns the sessions still live (the caller ends them)."""
        with self._lock:
            self.closed = True
            live = list(self._sessions.values()) + self._replaced
            self._sessions.clear()
            self._replaced = []
            return live


class FrameWriter:
    """The mux connection's outgoing side: one lock, so each frame (or batch of frames of
    one sub-connection) goes out whole and writers queue rather than interleave."""

    def __init__(self, pipe: Pipe):
        self.pipe = pipe
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self.pipe.write(data)

    def end(self, session: MuxSession, error: bool = False) -> None:
        """``session``'s End, once: the frame reader (a sub-connection that took none of
        its first data) and the session's pump may both end it, and 4.34 sends one."""
        with self._lock:
            if session.ended:
                return
            session.ended = True
        self.try_write(encode_end(session.id, error))

    def try_write(self, data: bytes) -> None:
        """A control frame (an End) for a connection that may already be gone."""
        try:
            self.write(data)
        except (PipeClosed, PipeInterrupted):
            pass


class SessionWriter:
    """One sub-connection's frames (writer.go ``Writer``): New first for a client session,
    then Keep with data; End when done, with the Error option if the copy failed."""

    def __init__(self, out: FrameWriter, session: MuxSession,
                 target: Optional[Destination] = None):
        self.out = out
        self.session = session
        self.target = target  # None: a server's response writer, Keep from the start

    def _status(self) -> Status:
        if self.target is None:
            return Status.KEEP
        return Status.NEW

    def _frame(self, data: Optional[bytes]) -> bytes:
        status = self._status()
        frame = encode_frame(self.session.id, status, data, self.target)
        self.target = None  # every later frame is a Keep
        return frame

    def write_meta_only(self) -> None:
        """New without data: the first payload did not come within 100 ms."""
        self.out.write(self._frame(None))

    def write(self, chunks: Sequence[bytes]) -> None:
        if self.session.packet:
            pieces = [chunk for chunk in chunks if _fits_packet(chunk)]
        else:
            pieces = split_stream(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if pieces:
            self.out.write(b"".join([self._frame(piece) for piece in pieces]))

    def close(self, error: bool = False) -> None:
        self.out.end(self.session, error)


def _fits_packet(chunk: bytes) -> bool:
    """4.34's packet reader refuses a datagram over 2 KiB and ends the whole mux connection
    ("packet size too large"); such a datagram is dropped here instead. v2ray itself reads
    datagrams into 2 KiB buffers, so it never sends one."""
    if len(chunk) <= MAX_PACKET_SIZE:
        return True
    log.debug("mux: dropped a %d-byte datagram (over %d)", len(chunk), MAX_PACKET_SIZE)
    return False


def pump_steps(session: MuxSession, writer: SessionWriter) -> Steps[bool]:
    """Send the sub-connection's data until its EOF, then End; False if the copy failed
    (End then carries the Error option). Steps: it parks while the sub-connection is quiet,
    so an idle sub-connection holds no thread (each held one: 1,000 mux UDP
    sub-connections, each waiting for answers, held 1,000 threads here)."""
    failed = False
    try:
        while True:
            chunks = yield from read_all_steps(session.link.reader)
            if chunks is EOF:
                break
            writer.write(chunks)
            del chunks
    except TransportError:
        failed = True
        session.link.reader.interrupt()
    writer.close(failed)
    return not failed


class FrameReader:
    """Frames from a pipe of byte chunks; ``next`` returns None at a clean EOF.

    ``is_stream(session_id)`` says whose data may be merged: consecutive Keep frames of one
    TCP sub-connection already in the buffer come back as one frame, so a 512 KiB chunk of
    8 KiB frames is one write into that sub-connection's pipe, not 64 (datagrams never merge).
    """

    def __init__(self, pipe: Pipe, is_stream: Callable[[int], bool] = lambda _: False):
        self.pipe = pipe
        self.is_stream = is_stream
        self._buf = b""
        self._pos = 0

    def next(self) -> Optional[Frame]:
        """``next_steps`` in this thread, blocking while the pipe is empty."""
        return drive(self.next_steps())

    def next_steps(self) -> Steps[Optional[Frame]]:
        """The next frame; steps: a reader of a quiet mux connection parks on its pipe,
        holding no thread (one each, where 4.34 holds a goroutine)."""
        while True:
            parsed = parse_frame(self._buf, self._pos)
            if parsed is not None:
                frame, consumed = parsed
                self._pos += consumed
                if frame.status is Status.KEEP_ALIVE and frame.data is None:
                    continue  # it does nothing (nor in 4.34): a flood of them costs a parse
                return self._merged(frame)
            chunks = yield from read_all_steps(self.pipe)
            if chunks is EOF:
                if self._pos < len(self._buf):
                    raise RemoteProtocolError("mux: connection ended inside a frame")
                return None
            if self._pos < len(self._buf):
                chunks.insert(0, self._buf[self._pos:])  # a frame's start: the list is ours
            self._buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)  # one: no copy
            self._pos = 0

    def _merged(self, frame: Frame) -> Frame:
        if frame.status is not Status.KEEP or not frame.data or not self.is_stream(frame.session_id):
            return frame
        parts = [frame.data]
        while True:
            try:
                parsed = parse_frame(self._buf, self._pos)
            except RemoteProtocolError:
                break  # the next call reports it
            if parsed is None:
                break
            following, consumed = parsed
            if (following.status is not Status.KEEP or following.session_id != frame.session_id
                    or not following.data or following.option != frame.option):
                break
            parts.append(following.data)
            self._pos += consumed
        if len(parts) == 1:
            return frame
        return Frame(frame.session_id, frame.status, frame.option, None, b"".join(parts))


class FrameHandler(abc.ABC):
    """Keep, End and KeepAlive, as client.go and server.go both handle them; ``on_new`` is
    the side's own."""

    def __init__(self, out: FrameWriter, sessions: SessionTable, name: str):
        self.out = out
        self.sessions = sessions
        self.name = name

    def is_stream(self, session_id: int) -> bool:
        """For ``FrameReader``: a live TCP sub-connection, whose data frames may merge."""
        session = self.sessions.get(session_id)
        return session is not None and not session.packet

    def handle(self, frame: Frame) -> None:
        status = frame.status
        if status is Status.KEEP:
            self.on_keep(frame)
        elif status is Status.END:
            self.on_end(frame)
        elif status is Status.NEW:
            self.on_new(frame)
        # KeepAlive: nobody sends it in 4.34; its data, if any, is dropped

    @abc.abstractmethod
    def on_new(self, frame: Frame) -> None:
        """A server dispatches the new sub-connection; a client drops the frame."""

    def on_keep(self, frame: Frame) -> None:
        if frame.data is None:
            return
        session = self.sessions.get(frame.session_id)
        if session is None:
            self.out.try_write(encode_end(frame.session_id))  # "close this session"
            return
        self.deliver(session, frame.data)

    def deliver(self, session: MuxSession, data: bytes, first: bool = False) -> None:
        """Hand data to the sub-connection; blocks while its pipe is full, as 4.34 does.
        A sub-connection that takes none of its first data (a blackhole, a refused route)
        ends with the Error option, so the peer's stream ends at once (server.go's
        ``handleStatusNew``: its response goroutine sends that End); one that stops later
        with a plain End (``handleStatusKeep``), which the peer takes as a close."""
        if session.packet and len(data) > MAX_PACKET_SIZE:
            raise RemoteProtocolError(f"mux: packet of {len(data)} bytes is too large")
        try:
            session.link.writer.write(data)
        except (PipeClosed, PipeInterrupted):
            log.debug("%s: sub-connection %d stopped reading; closing it", self.name, session.id)
            self.out.end(session, error=first)
            session.link.reader.interrupt()
            self.sessions.remove(session)

    def on_end(self, frame: Frame) -> None:
        session = self.sessions.get(frame.session_id)
        if session is None:
            return
        if frame.has_error:
            session.link.interrupt()
        else:
            session.link.writer.close()
        self.sessions.remove(session)

    def end_all(self) -> None:
        """The mux connection is gone: every live sub-connection ends now."""
        for session in self.sessions.close():
            session.link.interrupt()
