"""The relay's copy loops (v2ray ``common/buf/copy.go`` with ``UpdateActivity``).

During the relay, sockets block without a timeout: the connection's ``ActivityTimer`` is the
bound. When it expires it aborts the connection and interrupts the link, which unblocks
every loop below at once; a per-read socket timeout would cost a poll() per read for nothing.

What a direction holds while its consumer is stalled (a client that stops reading), beside
the kernel's socket buffers:

- nothing at the reader: it waits for room in the pipe before it reads, holding no chunk;
- the pipe: at most its limit (the policy's ``bufferSize``) plus PIPE_READ_FLOOR, because a
  read asks for no more than the pipe's room, or PIPE_READ_FLOOR when less is left
  (``adaptive_reads`` with a pipe). From 128 KiB up, the limit itself: a read then waits for
  a floor's worth of room;
- the writer: what it last took from the pipe (``read_all``), stuck in ``sendall``: at most
  what the pipe held.

So at the default 512 KiB a stalled download holds at most 1 MiB, as v2ray 4.34 does (its
pipe's limit plus one 64 KiB readv, and the writer's MultiBuffer of the pipe's whole
content). Chunks are at most the pipe's room, so a bulk transfer moves 512 KiB per read at
the default, where a read could take RELAY_READ_SIZE before: measured, 5-10% more CPU per
GiB on the bare relay (twice the reads and thread hand-overs), bulk throughput within noise.
Loops drop each chunk once it is handed on, so an idle connection does not keep the last
chunk of a burst alive while it waits for the next one.
"""
from __future__ import annotations

from typing import Callable, Generator, Iterator, List, Optional, Union, cast

from v2sync.common.errors import PipeClosed, PipeInterrupted
from v2sync.common.signal import ActivityTimer
from v2sync.common.task import PARKED, Steps, Wait, Waker, crowded, wait_lingering
from v2sync.transport.internet.conn import RELAY_READ_SIZE, Connection, send_queue_empty
from v2sync.transport.internet.readiness import Readable, ReadWaiter
from v2sync.transport.pipe import EOF, Pipe, PipeReadable, ReadTimeout, _EOFType

# Adaptive read size (Netty's AdaptiveRecvByteBufAllocator idea): a read allocates its
# buffer before it blocks, so an idle connection parked in recv() holds that buffer. Grow
# 4x while reads come back full (bulk), drop 4x when they come back under a quarter full;
# a bulk transfer reaches the RELAY_READ_SIZE ceiling after four full reads.
#
# The first read takes up to 4 KiB, so a typical first payload (a TLS ClientHello, an HTTP
# request) reaches the outbound as one chunk and leaves in one write, as in v2ray, instead
# of being cut at 512 bytes into two pipe hand-overs and two upstream segments. Measured on
# the 1 KiB echo: two recv and two send calls fewer per connection; memory per held
# connection unchanged (89.9 KiB), since a small first read drops the size back at once.
MIN_READ_SIZE = 512
FIRST_READ_SIZE = 4096
# A parking reader of a crowded group (``common.task.crowded``) reads without waiting
# (``recv_waiting``), so a big buffer costs only for the read itself, never for a wait: it
# asks for at least this much, and a 64 KiB request takes one read instead of three.
CROWDED_READ_SIZE = 64 * 1024
# The least a read into a pipe asks for once the pipe accepts a write, however little room is
# left: one v2ray read (readv fills up to 32 buffers of buf.Size, 2 KiB:
# common/buf/readv_reader.go), which may overshoot the limit as v2ray's write does. A pipe of
# bufferSize 0 still moves data in 64 KiB hand-overs rather than one byte at a time.
PIPE_READ_FLOOR = 64 * 1024
# A read this close to full counts as full. A layer (TLS, WebSocket) reads ciphertext or
# frames and hands back their payload, a little less than it read: a 16 KiB raw read gives
# ~16.3 KiB of frame payload under TLS and WS from v2ray's 2 KiB records. Grown only on an
# exactly full read, the size stayed at 16 KiB for good (4 KiB reads against 4.34's WS+TLS
# server: 4,000 reads and pipe hand-overs per 64 MiB); the slack lets it grow as over TCP.
NEARLY_FULL_SLACK = 16  # 1/16 of the size: TLS+WS framing is ~1.5% of it


class ReadSizer:
    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = FIRST_READ_SIZE

    def next_size(self, got: int, asked: Optional[int] = None) -> int:
        """The size after a read that asked for ``asked`` (default: the current size) and got
        ``got`` bytes. A full read (within NEARLY_FULL_SLACK) grows it. A read cut short by
        a pipe's room that came back full says nothing about the size, so it keeps it; one
        under a quarter of its ask shrinks it."""
        asked = self.size if asked is None else asked
        if got >= self.size - self.size // NEARLY_FULL_SLACK:
            self.size = min(self.size * 4, RELAY_READ_SIZE)
        elif got < min(asked, self.size) // 4:
            self.size = max(self.size // 4, MIN_READ_SIZE)
        return self.size


def room_wanted(size: int, limit: int) -> int:
    """The room to wait for before a read of ``size`` into a pipe of ``limit`` bytes.

    Reading as soon as the pipe is not full would, at a full pipe's edge, alternate one
    read of the room the consumer just made with one PIPE_READ_FLOOR read past the limit:
    twice the reads for the same bytes. Waiting for a floor's worth of room keeps reads
    whole. A pipe smaller than two floors waits for half its limit, so a write is let in
    while the pipe is well short of full, as v2ray lets it in."""
    return min(size, PIPE_READ_FLOOR, max(limit, 0) // 2)


def read_budget(size: int, room: int) -> int:
    """How much to read for a pipe that may still take ``room`` bytes."""
    return min(size, max(room, PIPE_READ_FLOOR))


def adaptive_reads(conn: Connection, pipe: Optional[Pipe] = None) -> Iterator[bytes]:
    """Read ``conn`` until EOF, each read sized by a fresh ``ReadSizer``.

    With ``pipe``, where the caller writes what it reads (decoded or not), each read first
    waits until the pipe accepts a write and asks for no more than its room (``read_budget``):
    a stalled consumer stops the reads, and the bytes wait in the socket's buffer instead of
    a chunk held here. The reads also end quietly once the pipe takes no more writes (its
    reader is gone, or the link was interrupted); the caller's next write or close says which.
    Write each chunk before asking for the next.
    """
    return cast(Iterator[bytes], parkable_reads(conn, pipe, None))


def parkable_reads(conn: Connection, pipe: Optional[Pipe],
                   waiter: Optional[ReadWaiter]) -> Iterator[Union[bytes, Wait]]:
    """``adaptive_reads`` whose reader, given a ``waiter``, parks when idle: after
    PARK_AFTER seconds with nothing to read it yields a ``Wait`` (its caller yields it on,
    up to ``spawn_steps``), and the socket waits in the waiter's selector, not a thread."""
    waiter = parking(conn, waiter)
    sizer = ReadSizer()
    while True:
        size = sizer.size
        if waiter is not None and crowded():
            size = max(size, CROWDED_READ_SIZE)
        if pipe is not None:
            try:
                size = read_budget(size, pipe.wait_room(room_wanted(size, pipe.limit)))
            except (PipeInterrupted, PipeClosed):
                return
        data = yield from read_or_park(conn, size, waiter)
        if not data:
            return
        got = len(data)
        yield data
        del data  # handed on: not kept alive while the next read waits
        sizer.next_size(got, size)


def parking(conn: Connection, waiter: Optional[ReadWaiter]) -> Optional[ReadWaiter]:
    """``waiter`` if ``conn``'s reads can park (its read timeout is armed now), else None:
    then its reads block as they always did."""
    if waiter is None or not conn.arm_read_timeout(PARK_AFTER):
        return None
    return waiter


def read_or_park(conn: Connection, size: int,
                 waiter: Optional[ReadWaiter]) -> Generator[Wait, None, bytes]:
    """``conn.read(size)``; given a waiter (``parking``), each PARK_AFTER seconds with
    nothing to read yields a ``Readable`` wait instead. Bytes a layer already holds (TLS
    plaintext, a WebSocket frame) are read without waiting for the socket at all."""
    if waiter is None:
        return conn.read(size)
    while True:
        data = conn.read_or_none(size)
        if data is not None:
            return data
        yield Readable(conn.sock, waiter)


def copy_conn_to_pipe_steps(conn: Connection, pipe: Pipe, timer: ActivityTimer,
                            waiter: Optional[ReadWaiter]) -> Steps[int]:
    """Copy until the connection's EOF; returns the byte count. Does not close ``pipe``.
    ``conn`` must be blocking (``run_relay`` sees to it). Given a ``waiter``, an idle
    read parks there (``parkable_reads``); without one the steps never wait (``drive``).

    A pipe whose reader has stopped (the outbound finished, e.g. blackhole after its 403)
    ends this direction quietly: the other direction may still hold an answer to deliver.
    A real failure interrupts both pipes and surfaces there.
    """
    total = 0
    for data in parkable_reads(conn, pipe, waiter):
        if isinstance(data, Wait):
            yield data
            continue
        timer.update()
        size = len(data)
        if not write_or_stop(pipe, data):
            break
        del data  # the pipe holds it now; this loop must not while the next read waits
        total += size
    return total


def write_or_stop(pipe: Pipe, data: bytes) -> bool:
    """Write to a pipe; False if its reader is gone (the caller stops this direction)."""
    try:
        pipe.write(data)
        return True
    except (PipeInterrupted, PipeClosed):
        return False


# How long a drain waits for its pipe with a thread before it parks (``PipeDrain``).
PARK_AFTER = 0.05
# The most a writer sends for a parked drain from its own thread (``ready_inline``): with
# the socket's send queue empty this fits in the smallest default send buffer (Linux
# tcp_wmem's 16 KiB) with room for framing and the kernel's accounting, so the write never
# waits for the peer, however full its receive window.
INLINE_MAX = 8 * 1024


class PipeDrain:
    """A pipe -> connection direction written as steps, so its thread can leave while the
    pipe is empty (``run_relay`` runs it; ``common.task.PARKED``).

    Of a held connection's four relay threads (each side's socket reader and pipe
    writer), the two pipe writers wait on a pipe; parked, they cost no thread. A CPython
    thread parked in a wait holds ~18-20 KiB (its stack pages, its frame chunk, its thread
    state), so this takes a held connection from four threads to two.

    A parked drain woken by a small write runs its step in the writer's thread when its
    connection's send queue is empty (``ready_inline``): the few bytes of a request or an
    answer leave at once instead of after a hand-over to a pooled thread (measured: p50 of
    connect + 1 KiB echo 0.80-0.90 -> 0.65-0.69 ms on the bare relay). Bulk data, a
    connection with bytes still queued (a slow or stalled reader) and an interrupt go to a
    pooled thread, so a writer never waits on another connection's reader: the mux reader
    serving many sub-connections, one of them stalled, least of all.

    ``send(chunks)`` writes what the pipe gave (every chunk queued, as ``read_all``);
    ``finish()`` runs at the pipe's EOF; ``conn`` is what ``send`` writes to. Their state
    lives in the objects they close over, never in a loop's locals: a step after a park
    starts afresh from ``step``.
    """

    __slots__ = ("pipe", "send", "finish", "conn", "datagrams", "_inline")

    def __init__(self, pipe: Pipe, send: Callable[[List[bytes]], object],
                 finish: Optional[Callable[[], None]] = None,
                 conn: Optional[Connection] = None, datagrams: bool = False):
        self.pipe = pipe
        self.send = send
        self.finish = finish
        self.conn = conn
        # A UDP session's: its wait before parking counts with the process's lingering
        # readers (``common.task.wait_lingering``), as new sessions come in bursts. A
        # stream's keeps its thread for a bulk transfer's next read.
        self.datagrams = datagrams
        self._inline = False

    def ready_inline(self) -> bool:
        """May the waking writer run the next step itself? Yes for at most INLINE_MAX
        bytes (or the EOF) into a connection whose send queue is empty; that step parks as soon
        as the pipe is empty instead of lingering PARK_AFTER."""
        if self.conn is None or not self.pipe.small_and_live(INLINE_MAX):
            return False
        if not send_queue_empty(self.conn):
            return False
        self._inline = True
        return True

    def step(self, timer: ActivityTimer, wake: Optional[Waker] = None) -> object:
        """Send until EOF (None) or, given ``wake``, until the pipe has stayed empty for
        PARK_AFTER seconds (``PARKED``: ``wake`` runs the next step)."""
        pipe = self.pipe
        wait = 0.0 if self._inline or crowded() else PARK_AFTER
        self._inline = False
        while True:
            chunks = pipe.read_all() if wake is None else self._read_or_park(wait, wake)
            if chunks is PARKED:
                return PARKED
            if not isinstance(chunks, list):  # EOF
                if self.finish is not None:
                    self.finish()
                return None
            timer.update()
            self.send(chunks)
            del chunks  # sent: not kept alive while the next read waits

    def _read_or_park(self, wait: float, wake: Waker) -> object:
        if wait and self.datagrams:
            chunks = wait_lingering(self.pipe.read_all_or_park, wait, wake)
            if chunks is not None:
                return chunks
            wait = 0.0  # enough threads linger already: park at once
        return self.pipe.read_all_or_park(wait, wake)


def read_all_steps(pipe: Pipe, linger: float = PARK_AFTER
                   ) -> Generator[Wait, None, Union[List[bytes], _EOFType]]:
    """``pipe.read_all()`` as steps: after ``linger`` seconds with nothing to read (at once
    in a crowded group, or with MAX_LINGERING readers lingering already) the reader parks
    on the pipe, holding no thread, until a write, the close or an interrupt. Raises as
    ``read_all``. For readers whose wait is the whole of their life (a UDP session's
    answers, a mux sub-connection's), where a ``PipeDrain``'s one-sided shape does not
    fit."""
    wait = 0.0 if crowded() else linger
    while True:
        try:
            return pipe.read_all(0)
        except ReadTimeout:
            pass
        if not wait or not wait_lingering(pipe.wait_readable_for, wait):
            yield PipeReadable(pipe)
        wait = 0.0


def conn_drain(pipe: Pipe, conn: Connection,
               finish: Optional[Callable[[], None]] = None) -> PipeDrain:
    """Copy the pipe to ``conn`` until its EOF (which does not close ``conn``; ``finish``
    runs then, if given).

    Each step takes every chunk queued (``Pipe.read_all``) and sends them in one gather
    write. Taking one chunk at a time, a pipe that held two half-limit chunks kept holding
    two: the reader, told the room of one, read half a limit again (measured: 256 KiB reads
    at the default 512 KiB, 2.6x the system calls of 1 MiB reads per GiB).
    """
    return PipeDrain(pipe, lambda chunks: write_chunks(conn, chunks), finish, conn)


def write_chunks(conn: Connection, chunks: List[bytes]) -> int:
    """Send ``chunks`` as one stream write; returns the byte count."""
    if len(chunks) == 1:
        conn.write(chunks[0])
        return len(chunks[0])
    conn.write_parts(chunks)
    return sum(map(len, chunks))


def flush_ready(pipe: Pipe, conn: Connection, timer: ActivityTimer) -> None:
    """Write what the pipe holds right now, without waiting (the first bytes of a relay,
    sent before its thread pair starts). EOF stays in the pipe for the copy loop to see."""
    while True:
        try:
            chunk = pipe.read(timeout=0)
        except ReadTimeout:
            return
        if chunk is EOF:
            return
        timer.update()
        conn.write(chunk)
