"""``Connection``: a stream with bounded reads, as proxies see it (v2ray ``internet.Connection``).

Reads return ``b""`` at EOF, the socket convention; pipes use the ``EOF`` sentinel instead.
``abort()`` may be called from any thread (an inactivity timer, shutdown) and unblocks a
reader or writer stuck in the kernel.
"""
from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import Callable, Generator, List, Optional, Sequence, Tuple, TypeVar

try:
    import fcntl
except ImportError:  # not a POSIX system: no ioctl, so no inline sends (send_queue_empty)
    fcntl = None  # type: ignore[assignment]

from v2sync.common.errors import (HandshakeClosed, HandshakeTimeout, RemoteProtocolError,
                                  ServerHandshakeError, TransportError)
from v2sync.common.net import Address, Destination
from v2sync.common.task import crowded, outside_slot
from v2sync.transport.internet.readiness import wait_readable

# The largest relay read. Reads start small and grow while they come back full
# (transport.copy.ReadSizer), so only a transfer that outpaces the proxy reaches this: the
# Python cost is per read, not per byte. Measured on loopback (tools/bench.py): 256 KiB
# reads moved 1.3-1.4x the bytes per second of 64 KiB reads, and 1 MiB reads another
# 1.15-1.25x (relay) and 1.05x (VMess). On a slower link reads rarely come back full, so
# they stay small; a reader waiting in recv() holds a 512 B - 4 KiB buffer, and only until
# it parks (transport.copy.read_or_park).
RELAY_READ_SIZE = 1024 * 1024
# sendmsg takes at most IOV_MAX (1024 on Linux) buffers per call.
MAX_GATHER_PARTS = 1024
T = TypeVar("T")
# Handshake steps: a generator that yields the deadline it waits for (while parked in the
# selector) and returns its result.
Handshake = Generator[float, None, T]
# Handshake reads: greetings are small, and a slow client parks in recv() with this buffer.
HANDSHAKE_READ_SIZE = 4 * 1024
# Batched bulk reads (recv_waiting). A relay read this large means the reads before it came
# back full: bytes arrive faster than the reader takes them. While such reads keep bringing
# BULK_LOWAT bytes, each waits (up to BULK_WAIT_MS) until that much is queued
# (SO_RCVLOWAT), so the reader is woken once per 64 KiB, not once per segment.
BULK_READ = 256 * 1024
BULK_LOWAT = 64 * 1024
BULK_WAIT_MS = 1
_HAS_LOWAT = hasattr(socket, "SO_RCVLOWAT") and hasattr(select, "poll")


def destination_of(sockaddr) -> Destination:
    return Destination(Address.parse(sockaddr[0]), sockaddr[1])


class Connection:
    """A connected stream socket; safe for one reader thread plus one writer thread."""

    def __init__(self, sock: socket.socket, remote: Optional[Destination] = None):
        self.sock = sock
        self.remote = remote or destination_of(sock.getpeername())
        self._local: Optional[Destination] = None
        self._closed = False
        self._aborted = False
        self._close_lock = threading.Lock()
        self.read_timeout_armed = False  # see arm_read_timeout
        self.lowat_raised = False  # SO_RCVLOWAT is BULK_LOWAT: a bulk read flows (_recv_bulk)

    @property
    def local(self) -> Destination:
        """Our end of the connection; computed on demand (few handlers ever ask)."""
        if self._local is None:
            self._local = destination_of(self.sock.getsockname())
        return self._local

    def settimeout(self, timeout: Optional[float]) -> None:
        if timeout is None and self.sock.gettimeout() is None:
            return  # blocking already: Python's settimeout would set the mode again (ioctl)
        self.sock.settimeout(timeout)

    # recv/sendall are the raw byte operations a wrapper (TLS, WebSocket, HTTP header)
    # overrides; they raise OSError like a socket. read/write translate those errors.
    def recv(self, max_bytes: int) -> bytes:
        return recv_waiting(self, max_bytes)

    def sendall(self, data: bytes) -> None:
        send_waiting(self.sock, data)

    def sendall_parts(self, parts: Sequence[bytes]) -> None:
        """Send ``parts`` back to back as one stream write, without joining them first:
        one ``sendmsg`` (gather) call, so a small header still leaves with its payload.
        A socket timeout bounds each call, as it bounds each chunk of ``sendall``."""
        views = [memoryview(part).cast("B") for part in parts if part]
        try:
            sent = self.sock.sendmsg(views[:MAX_GATHER_PARTS], (), socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        _consume(views, sent)
        if views:  # the socket's buffer is full: this may wait for the peer
            outside_slot(self._sendmsg_all, views)

    def _sendmsg_all(self, views: List[memoryview]) -> None:
        while views:
            _consume(views, self.sock.sendmsg(views[:MAX_GATHER_PARTS]))

    def read(self, max_bytes: int = HANDSHAKE_READ_SIZE) -> bytes:
        try:
            return self.recv(max_bytes)
        except OSError as e:
            raise self._read_error(e) from e

    def read_or_none(self, max_bytes: int) -> Optional[bytes]:
        """``read``, or None when the armed read timeout passed with nothing to read.
        That is how every idle relay reader parks, so it is told apart before any error
        message is made."""
        try:
            return self.recv(max_bytes)
        except BlockingIOError as e:
            if self.read_timeout_armed:
                return None
            raise self._read_error(e) from e
        except OSError as e:
            raise self._read_error(e) from e
        except TransportError as e:  # a layer's own (TLS, WebSocket) over the timeout
            if self.read_timeout_armed and isinstance(e.__cause__, BlockingIOError):
                return None
            raise

    def _read_error(self, e: OSError) -> TransportError:
        if isinstance(e, socket.timeout):
            return TransportError(f"read from {self.remote} timed out")
        return TransportError(f"read from {self.remote} failed: {e}")

    def cap_handshake(self, deadline: float) -> None:
        """A protocol's own handshake deadline (monotonic) also bounds a layer's handshake
        still to finish on first use (TLS); plain TCP has none."""

    def arm_read_timeout(self, seconds: float) -> bool:
        """Let a blocking read give up after ``seconds`` with nothing to read
        (``read_or_none`` then says None), so an idle relay reader can park
        (``transport.copy.read_or_park``). The kernel keeps the time (``SO_RCVTIMEO``):
        a reader blocks in its read as before, with no ``poll`` first, which measured ~8
        µs more per wake-up. Only the socket's reads are affected, and a socket with a
        Python timeout (a handshake step) is non-blocking, so it never waits that long.
        False where the option is refused."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
        except (OSError, AttributeError):
            return False
        self.read_timeout_armed = True
        return True

    def write(self, data: bytes) -> None:
        try:
            self.sendall(data)
        except OSError as e:
            raise TransportError(f"write to {self.remote} failed: {e}") from e

    def send_now(self, data: bytes) -> None:
        """Last words before an end (an abort from the timer wheel's one thread): what
        the socket takes at once goes, the rest is dropped; never waits and never raises.
        A layer that frames what it sends (WebSocket, the HTTP header) sends its own
        through its inner connection's ``send_now`` and drops what it is given."""
        try:
            self.sock.send(data, socket.MSG_DONTWAIT)
        except OSError:
            pass

    def write_parts(self, parts: Sequence[bytes]) -> None:
        """``sendall_parts``, its errors translated as ``write`` translates them."""
        try:
            self.sendall_parts(parts)
        except OSError as e:
            raise TransportError(f"write to {self.remote} failed: {e}") from e

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already closed or reset: nothing left to signal

    def abort(self) -> None:
        """Unblock every thread using this connection; the owner still calls close()."""
        if self._aborted:
            return  # a teardown aborts each side several times; one shutdown is enough
        self._aborted = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Idempotent and thread-safe; ``_release`` runs exactly once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._release()

    def _release(self) -> None:
        self.sock.close()

    @property
    def closed(self) -> bool:
        return self._closed


def new_socket(family: int, kind: int, failure: str) -> socket.socket:
    """``socket.socket(family, kind)``; a process out of file descriptors (EMFILE) fails
    the dial like any other (``TransportError``: retried, logged on one line, as 4.34's
    "socket: too many open files"), not as a crash."""
    try:
        return socket.socket(family, kind)
    except OSError as e:
        raise TransportError(f"{failure}: {e.strerror or e}") from e


def _timeval(seconds: float) -> bytes:
    """A C ``struct timeval`` (two native longs, as the SO_RCVTIMEO of this platform's ABI
    takes it)."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


# linux/sockios.h: bytes in a socket's send queue, not yet sent or not yet acknowledged.
SIOCOUTQ = 0x5411


def send_queue_empty(conn: Connection) -> bool:
    """Whether everything written to ``conn``'s socket has left it (``SIOCOUTQ`` is 0): a
    small write then fits in the send buffer whatever the peer's window, so it cannot
    block. False when it cannot tell (a closed socket, a platform without the ioctl)."""
    if fcntl is None:
        return False
    try:
        queued = fcntl.ioctl(conn.sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return False
    return queued == b"\0\0\0\0"


def _consume(views: List[memoryview], sent: int) -> None:
    """Drop the first ``sent`` bytes of ``views``."""
    while views and sent >= len(views[0]):
        sent -= len(views.pop(0))
    if views and sent:
        views[0] = views[0][sent:]


def recv_waiting(conn: Connection, size: int, batched: bool = False) -> bytes:
    """``conn.sock.recv(size)`` from a worker, which holds no run slot while the read waits
    (``common.task.leave_slot``). A parking reader (armed: its reads give up after the
    park timeout) of a crowded group does not wait at all: BlockingIOError, as when that
    timeout passes, and it parks at once, its thread free for a queued step. A bulk read
    of an armed reader may be ``batched`` (``_recv_bulk``): a TLS client's, where it was
    measured to pay (see README, issue 19)."""
    if batched and size >= BULK_READ and conn.read_timeout_armed and _HAS_LOWAT:
        return _recv_bulk(conn, size)
    if conn.lowat_raised:
        _raise_lowat(conn, False)  # before any wait: a parked reader's epoll reads it too
    return _recv_plain(conn.sock, size, conn.read_timeout_armed)


def _recv_plain(sock: socket.socket, size: int, armed: bool) -> bytes:
    if armed and crowded():
        return sock.recv(size, socket.MSG_DONTWAIT)
    return outside_slot(sock.recv, size)


def _recv_bulk(conn: Connection, size: int) -> bytes:
    """A bulk read. While the stream flows (the last bulk read brought BULK_LOWAT bytes or
    more, and the mark is raised), it waits until that much is queued or BULK_WAIT_MS
    passed, and takes what came; a short read or none lowers the mark again, so a read
    that may wait long, or park, wakes for a single byte.

    Why: a reader that keeps up with its sender drains the socket and sleeps, and each
    segment that arrives wakes it, at the sender's cost too: on loopback 4.34's server
    writes every 2 KiB record as a segment of its own. The kernel wakes a reader only once
    its mark is reached (or at EOF or an error). A flowing transfer's last bytes come at
    most BULK_WAIT_MS late; a stream that idled starts again unbatched."""
    sock = conn.sock
    if conn.lowat_raised and not crowded():
        outside_slot(wait_readable, sock, BULK_WAIT_MS / 1000)
        try:
            data = sock.recv(size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            _raise_lowat(conn, False)  # nothing within the wait: read as any read
        else:
            if len(data) < BULK_LOWAT:
                _raise_lowat(conn, False)
            return data
    elif conn.lowat_raised:
        _raise_lowat(conn, False)
    data = _recv_plain(sock, size, conn.read_timeout_armed)
    if len(data) >= BULK_LOWAT:
        _raise_lowat(conn, True)
    return data


def _raise_lowat(conn: Connection, raised: bool) -> None:
    """Set SO_RCVLOWAT to BULK_LOWAT (or back to 1). A socket that refuses keeps its
    mark, and its reads go on unbatched (or fail on their own, if it is closed)."""
    try:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, BULK_LOWAT if raised else 1)
    except OSError:
        return
    conn.lowat_raised = raised


def send_waiting(sock: socket.socket, data: bytes) -> None:
    """``sock.sendall(data)``; holds no run slot while it waits for a full send buffer."""
    try:
        sent = sock.send(data, socket.MSG_DONTWAIT)
    except BlockingIOError:
        sent = 0
    if sent != len(data):
        outside_slot(sock.sendall, memoryview(data)[sent:])


class WrappedConnection(Connection):
    """A layer over another connection (TLS, WebSocket, HTTP header): same socket, same
    peer; ``abort`` and ``close`` go down to the inner layer so each can say goodbye."""

    def __init__(self, inner: Connection, pending: bytes = b"",
                 remote: Optional[Destination] = None):
        super().__init__(inner.sock, remote or inner.remote)
        self.inner = inner
        self._pending = pending  # bytes read past this layer's handshake; served first

    def recv(self, max_bytes: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
            return data
        return self.inner.recv(max_bytes)

    def cap_handshake(self, deadline: float) -> None:
        self.inner.cap_handshake(deadline)

    def arm_read_timeout(self, seconds: float) -> bool:
        self.read_timeout_armed = self.inner.arm_read_timeout(seconds)  # every layer knows
        return self.read_timeout_armed

    def sendall(self, data: bytes) -> None:
        self.inner.sendall(data)

    def sendall_parts(self, parts: Sequence[bytes]) -> None:
        """A layer transforms what it sends (sendall), so by default it sends the parts
        joined; TLS overrides this to take them as they are."""
        self.sendall(b"".join(parts))

    def send_now(self, data: bytes) -> None:
        self.inner.send_now(data)

    def abort(self) -> None:
        self.inner.abort()

    def _release(self) -> None:
        self.inner.close()


def try_write(conn: Connection, data: bytes) -> None:
    """Best-effort error reply (a 400, a SOCKS failure): the peer may already be gone."""
    try:
        conn.write(data)
    except TransportError:
        pass


def is_parked(sock: socket.socket) -> bool:
    """A non-blocking socket: its connection waits in the handshake selector, not in a
    thread. Reads there raise ``BlockingIOError`` instead of waiting, and a handshake
    step ``yield``s its deadline to be resumed when bytes arrive (``handshakes.py``)."""
    return sock.gettimeout() == 0.0


def hand_back_if_parked(sock: socket.socket, what: str) -> None:
    """For a layer whose read brought nothing for the layer above (empty WebSocket frames,
    TLS records without data): in the handshake selector, give its thread back. It runs
    every inbound's handshakes, and a client streaming such frames or records held it,
    every other handshake waiting seconds (found by reviews). The selector calls again
    when more bytes come, and checks the deadline first."""
    if is_parked(sock):
        raise BlockingIOError(what)


def arm_deadline(sock: socket.socket, deadline: float) -> bool:
    """Before a handshake read: False if ``deadline`` (monotonic) has passed, else True with
    the socket's timeout set to what is left. A parked socket is left non-blocking: the
    selector keeps its deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    if not is_parked(sock):
        sock.settimeout(remaining)
    return True


def complete(steps: Generator[float, None, T]) -> T:
    """Run handshake ``steps`` on a blocking socket, where they never have to wait:
    each read blocks (within its deadline) instead of yielding."""
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value
    steps.close()
    raise TransportError("a blocking handshake was asked to wait")


# 4.34's buffers (common/buf: ``Size``): every read of a connection is one or more of them.
GO_BUFFER_SIZE = 2048
GO_MAX_BUFFERS = 32  # readv_reader.go: allocStrategy's cap


class GoReads:
    """How large 4.34's next read of a connection is (``buf.NewReader``), for the inbounds
    whose rejections are probed (VMess, Shadowsocks, VLESS, Trojan).

    Why: a server that closes with bytes unread makes the kernel send a reset, one with
    none a FIN, so a prober sending a few KiB of noise learns how much the server read.
    Reading as 4.34 reads leaves the same bytes unread. On a plain TCP connection 4.34
    reads through ``ReadVReader``: one buffer (2 KiB), then, after a full one, ``readv``
    into 4, then 16, up to 32 buffers while they come back full, or as many as the last
    read filled. On any other layer (TLS, WebSocket, traffic counters) ``SingleReader``
    reads one buffer at a time. ``first_apart``: the first read is a buffer of its own
    (VLESS and Trojan: ``first.ReadFrom(conn)``), and the strategy starts after it.
    """

    __slots__ = ("_raw", "_current", "_first_apart")

    def __init__(self, raw: bool, first_apart: bool = False):
        self._raw = raw
        self._current = 1
        self._first_apart = first_apart

    @classmethod
    def of(cls, conn: "Connection", first_apart: bool = False) -> "GoReads":
        """For ``conn``: plain TCP (or a unix socket) reads as ``ReadVReader``."""
        return cls(type(conn) is Connection, first_apart)

    def size(self) -> int:
        return self._current * GO_BUFFER_SIZE

    def took(self, n: int) -> None:
        """The last read brought ``n`` bytes."""
        if self._first_apart:
            self._first_apart = False
        elif self._raw:
            self._current = self._next(n)

    def _next(self, n: int) -> int:
        if self._current == 1:  # ReadBuffer: one buffer, then readv once it came back full
            return 4 if n >= GO_BUFFER_SIZE else 1
        filled = max(1, -(-n // GO_BUFFER_SIZE))
        return min(self._current * 4, GO_MAX_BUFFERS) if filled >= self._current else filled


class HandshakeReader:
    """Accumulates handshake bytes under one absolute deadline and a byte cap.

    ``fill()`` reads once more into ``buf``; codecs parse ``buf`` and the caller ``consume``s
    what a frame used. A peer that trickles bytes cannot stretch the deadline. The
    ``*_steps`` forms are generators that yield the deadline whenever a parked (non-blocking)
    connection has no bytes yet; on a blocking socket they never yield (``complete``).
    Reads are HANDSHAKE_READ_SIZE, or sized as 4.34's with ``go_reads``.
    """

    def __init__(self, conn: Connection, deadline: float, max_bytes: int,
                 go_reads: Optional[GoReads] = None):
        self.conn = conn
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.received = 0  # bytes read in all, consumed or not
        self.go_reads = go_reads

    def fill(self) -> None:
        if not arm_deadline(self.conn.sock, self.deadline):
            raise HandshakeTimeout(f"handshake with {self.conn.remote} timed out")
        if len(self.buf) >= self.max_bytes:
            raise RemoteProtocolError(f"handshake larger than {self.max_bytes} bytes")
        size = HANDSHAKE_READ_SIZE if self.go_reads is None else self.go_reads.size()
        try:
            data = self.conn.recv(min(size, self.max_bytes - len(self.buf)))
        except socket.timeout as e:
            raise HandshakeTimeout(f"handshake with {self.conn.remote} timed out") from e
        except BlockingIOError:
            raise  # parked: the caller waits in the selector
        except OSError as e:
            raise TransportError(f"handshake read from {self.conn.remote} failed: {e}") from e
        if not data:
            raise HandshakeClosed("connection closed during handshake", empty=not self.received)
        if self.go_reads is not None:
            self.go_reads.took(len(data))
        self.received += len(data)
        self.buf += data

    def fill_steps(self) -> Generator[float, None, None]:
        """``fill``, waiting in the selector (one yield per wait) while parked."""
        while True:
            try:
                return self.fill()
            except BlockingIOError:
                yield self.deadline

    def consume(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def parse(self, parser: Callable[[bytes], Optional[Tuple[T, int]]]) -> T:
        """Run ``parser(buf) -> None | (frame, used)`` until it yields a frame; consume it."""
        return complete(self.parse_steps(parser))

    def parse_steps(self, parser: Callable[[bytes], Optional[Tuple[T, int]]]
                    ) -> Generator[float, None, T]:
        while True:
            result = parser(bytes(self.buf))
            if result is not None:
                frame, used = result
                del self.buf[:used]
                return frame
            yield from self.fill_steps()


def drain(reader: HandshakeReader, remaining: int) -> Handshake[None]:
    """Read and drop at least ``remaining`` more bytes, within the handshake deadline: the
    anti-probing drain of the VMess and Shadowsocks servers.

    As 4.34 (``ServerSession.DrainConnN``: ``io.CopyN`` through the handshake's
    ``BufferedReader``): reads go on, sized as the handshake's (``GoReads``), only while
    fewer bytes than the count have been read. What a read brings beyond the count is
    dropped with it; what arrived after the last read stays unread, so the close that
    follows makes the kernel send a reset, as 4.34's does, and a FIN when nothing was left.
    """
    conn, deadline = reader.conn, reader.deadline
    reads = reader.go_reads if reader.go_reads is not None else GoReads.of(conn)
    while remaining > 0:
        try:
            data = _read_before(conn, deadline, reads.size())
        except BlockingIOError:
            data = None
        except (OSError, HandshakeTimeout):
            return  # a reset, or the deadline: 4.34's read deadline ends it the same way
        if data is None:
            try:
                yield deadline  # parked: resumed when bytes arrive, cut at the deadline
            except HandshakeTimeout:
                return
            continue
        if not data:
            return
        reads.took(len(data))
        remaining -= len(data)


def _read_before(conn: Connection, deadline: float, size: int) -> bytes:
    if not arm_deadline(conn.sock, deadline):
        raise HandshakeTimeout("drain deadline")
    return conn.recv(size)


class FinishOnFirstUse:
    """The rest of a client handshake, run once by whichever thread first reads or writes.

    A dialer sends its opening message and returns at once (as Go's ``tls.Client`` does),
    so the proxy prepares its own request while the server answers. Each ``run`` call waits
    for that one run; after a failure every later call fails too. The step may set socket
    timeouts for its deadline; the socket's own timeout is put back afterwards.
    """

    def __init__(self, sock: socket.socket, step: Callable[..., None]):
        self.done = False
        self._sock = sock
        # Dropped once run: the step is a method of the connection that holds this object,
        # and kept, that cycle left every finished connection to the cyclic GC.
        self._step: Optional[Callable[..., None]] = step
        self._lock = threading.Lock()
        self._failure: Optional[BaseException] = None

    def run(self, *args) -> None:
        if self.done:
            return
        with self._lock:
            if self.done:
                return
            if self._failure is not None:
                raise TransportError(f"handshake failed earlier: {self._failure}") \
                    from self._failure
            step, self._step = self._step, None
            assert step is not None  # run once: a failure is kept, a success sets done
            timeout = self._sock.gettimeout()
            try:
                step(*args)
            except (TransportError, RemoteProtocolError, OSError) as e:
                self._failure = ServerHandshakeError(str(e))
                raise self._failure from e
            except BaseException as e:
                self._failure = e
                raise
            finally:
                self._sock.settimeout(timeout)
            self.done = True
