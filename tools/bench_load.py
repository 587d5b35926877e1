"""Load for tools/bench.py: a SOCKS5 client, and the idle, massclose, stalled and burst
scenarios' processes and measurements (issue 14).

Each load scenario drives a proxy's SOCKS5 inbound (-> freedom) as a busy or hostile
server's clients would, and reads what the proxy spends from outside, in
``/proc/PID/status`` (``Threads``, ``VmRSS``):

  - idle: N connections that never send a byte are held while normal clients make
    requests (connect + SOCKS5 + 1 KiB echo): is every request answered, how fast, and how
    many threads and how much memory do the idle connections cost?
  - massclose: M relaying connections (each echoes 4 KiB, then idles) closed at once, and
    fresh requests made right away: are they answered during the teardown, and how long
    until the proxy's threads are back to their baseline?
  - stalled: downloads whose client never reads: how much memory does the proxy add?
  - burst: B concurrent 64 KiB echoes: the wall time of the lot.

The load comes from processes of its own (``multiprocessing``, spawned): an origin, one
selector loop serving an echo port and a stream port, and clients that each run the calls
the bench sends them over a pipe. So no load generator shares a GIL with another or with
the bench's sampling of the proxy. Many connections at once go through one nonblocking
selector loop (``run_sessions``); the requests made among idle connections come from a
client process of their own. Every loop is bounded in count and time; every process and
socket is closed in a ``finally``.

This module imports only the standard library and tests/support, so the child processes
start light; tools/bench.py turns the figures into rows and targets.
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import select
import selectors
import socket
import statistics
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from support.resources import process_rss_kib, process_thread_count

Address = Tuple[str, int]
Figures = Dict[str, Optional[float]]
Held = Dict[str, List[socket.socket]]  # a client process's sockets kept between calls

KIB = 1024
MIB = 1024 * KIB
LOOPBACK = "127.0.0.1"

SOCKS_VERSION = 5
SOCKS_NO_AUTH = 0
SOCKS_CMD_CONNECT = 1
SOCKS_ATYP_IPV4, SOCKS_ATYP_DOMAIN, SOCKS_ATYP_IPV6 = 1, 3, 4
SOCKS_REPLY_SUCCEEDED = 0
SOCKS_GREETING = bytes([SOCKS_VERSION, 1, SOCKS_NO_AUTH])
SOCKS_METHOD_REPLY = bytes([SOCKS_VERSION, SOCKS_NO_AUTH])
SOCKS_REPLY_HEAD = 5  # a reply's first 5 bytes give its length (RFC 1928 section 6)

CLIENT_TIMEOUT = 30.0
ECHO_PAYLOAD = bytes(range(256)) * 4  # 1 KiB
# An echo over loopback takes milliseconds; a connection the server refused and is draining
# would otherwise hold the client until the server's handshake deadline (60 s).
ECHO_TIMEOUT = 5.0
RECV_SIZE = 256 * KIB


class BenchError(Exception):
    """A measurement that could not be taken (bad SOCKS reply, wrong data, deadline)."""


class Refused(BenchError):
    """The chain closed a fresh connection before any payload came back (retried)."""


def note(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


# -- a minimal SOCKS5 client (RFC 1928, no auth, CONNECT to an IPv4 literal) -----------------

def socks5_connect_request(target: Address) -> bytes:
    host, port = target
    return (bytes([SOCKS_VERSION, SOCKS_CMD_CONNECT, 0, SOCKS_ATYP_IPV4])
            + socket.inet_aton(host) + port.to_bytes(2, "big"))


def socks5_reply_length(head: Union[bytes, bytearray]) -> int:
    """The whole reply's length, from its first ``SOCKS_REPLY_HEAD`` bytes; BenchError for a
    failure status or an unknown address type."""
    version, status, _, atyp, first = head[:SOCKS_REPLY_HEAD]
    if version != SOCKS_VERSION or status != SOCKS_REPLY_SUCCEEDED:
        raise BenchError(f"SOCKS reply version {version} status {status}")
    address_length = {SOCKS_ATYP_IPV4: 4, SOCKS_ATYP_IPV6: 16, SOCKS_ATYP_DOMAIN: 1 + first}.get(atyp)
    if address_length is None:
        raise BenchError(f"SOCKS reply address type {atyp}")
    return 4 + address_length + 2  # bound address and port: unused


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            error = Refused if not data else BenchError  # cut short mid-answer: not a refusal
            raise error(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def socks5_connect(proxy_port: int, target: Address, timeout: float = CLIENT_TIMEOUT) -> socket.socket:
    """A socket connected through the SOCKS5 proxy on 127.0.0.1:``proxy_port`` to ``target``."""
    sock = socket.create_connection((LOOPBACK, proxy_port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(SOCKS_GREETING)
        if recv_exact(sock, 2) != SOCKS_METHOD_REPLY:
            raise BenchError("proxy refused SOCKS5 no-auth")
        sock.sendall(socks5_connect_request(target))
        head = recv_exact(sock, SOCKS_REPLY_HEAD)
        recv_exact(sock, socks5_reply_length(head) - len(head))
        return sock
    except BaseException:
        sock.close()
        raise


def echo_request(proxy_port: int, target: Address, timeout: float = ECHO_TIMEOUT) -> None:
    """One normal request: connect + SOCKS5 + 1 KiB echo + close."""
    with socks5_connect(proxy_port, target, timeout=timeout) as sock:
        sock.sendall(ECHO_PAYLOAD)
        if recv_exact(sock, len(ECHO_PAYLOAD)) != ECHO_PAYLOAD:
            raise BenchError("echo mismatch")


# -- many connections at once: one nonblocking selector loop ---------------------------------

# One step of a session: bytes to send, then how long the whole answer is (None: not known
# yet) from what has arrived, and the answer expected (None: any).
AnswerLength = Callable[[bytearray], Optional[int]]
Exchange = Tuple[bytes, AnswerLength, Optional[bytes]]


def _fixed_length(n: int) -> AnswerLength:
    return lambda inbox: n


def _socks_reply_length(inbox: bytearray) -> Optional[int]:
    return socks5_reply_length(inbox) if len(inbox) >= SOCKS_REPLY_HEAD else None


def echo_exchanges(payload: bytes) -> List[Exchange]:
    return [(payload, _fixed_length(len(payload)), payload)]


def socks_echo_exchanges(target: Address, payload: bytes) -> List[Exchange]:
    """SOCKS5 greeting, CONNECT to ``target``, then ``payload`` echoed."""
    return [(SOCKS_GREETING, _fixed_length(2), SOCKS_METHOD_REPLY),
            (socks5_connect_request(target), _socks_reply_length, None),
            *echo_exchanges(payload)]


class _Session:
    """One connection going through its exchanges, as far as its socket allows each time."""

    def __init__(self, dial: Address, exchanges: Sequence[Exchange]):
        self.exchanges = exchanges
        self.index = -1  # connecting
        self.outbox = memoryview(b"")
        self.inbox = bytearray()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.setblocking(False)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.connect_ex(dial)  # EINPROGRESS: writable once connected
        except BaseException:
            self.sock.close()
            raise

    def advance(self) -> int:
        """Go on as far as the socket allows; the events to wait for next, 0 when done."""
        if self.index < 0:
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            return self._next_exchange()
        if self.outbox:
            return self._flush()
        chunk = self.sock.recv(RECV_SIZE)
        if not chunk:
            raise (Refused if self.index == 0 and not self.inbox else BenchError)(
                f"EOF in exchange {self.index} after {len(self.inbox)} bytes")
        self.inbox += chunk
        _, length_of, expected = self.exchanges[self.index]
        length = length_of(self.inbox)
        if length is None or len(self.inbox) < length:
            return selectors.EVENT_READ
        if len(self.inbox) > length or (expected is not None and self.inbox != expected):
            raise BenchError(f"wrong answer in exchange {self.index}")
        return self._next_exchange()

    def _next_exchange(self) -> int:
        self.index += 1
        if self.index == len(self.exchanges):
            return 0
        self.inbox = bytearray()
        self.outbox = memoryview(self.exchanges[self.index][0])
        return self._flush()

    def _flush(self) -> int:
        try:
            self.outbox = self.outbox[self.sock.send(self.outbox):]
        except BlockingIOError:
            pass
        return selectors.EVENT_WRITE if self.outbox else selectors.EVENT_READ


@dataclass
class SessionsResult:
    completed: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_error: str = ""

    def fail(self, error: BaseException) -> None:
        self.failed += 1
        self.first_error = self.first_error or f"{type(error).__name__}: {error}"

    def summary(self) -> Dict[str, Any]:
        return {"completed": self.completed, "failed": self.failed, "seconds": self.seconds,
                "first_error": self.first_error}


def run_sessions(dial: Address, exchanges: Sequence[Exchange], count: int, concurrency: int,
                 deadline_seconds: float, keep: Optional[List[socket.socket]] = None
                 ) -> SessionsResult:
    """``count`` connections to ``dial``, at most ``concurrency`` under way at once, each through
    ``exchanges``; finished ones are closed, or appended to ``keep``. What is not done by the
    deadline counts as failed."""
    result = SessionsResult()
    selector = selectors.DefaultSelector()
    started = time.monotonic()
    deadline = started + deadline_seconds
    to_start = count
    try:
        while (to_start or selector.get_map()) and time.monotonic() < deadline:
            while to_start and len(selector.get_map()) < concurrency:
                to_start -= 1
                try:
                    session = _Session(dial, exchanges)
                except OSError as error:  # e.g. out of file descriptors
                    result.fail(error)
                    continue
                selector.register(session.sock, selectors.EVENT_WRITE, session)
            for key, _ in selector.select(timeout=min(0.1, max(0.0, deadline - time.monotonic()))):
                _step(selector, key.data, result, keep)
        result.seconds = time.monotonic() - started
    finally:
        for key in list(selector.get_map().values()):
            result.fail(BenchError(f"not done in {deadline_seconds} s"))
            key.fileobj.close()  # type: ignore[union-attr]
        result.failed += to_start
        selector.close()
    return result


def _step(selector: selectors.BaseSelector, session: _Session, result: SessionsResult,
          keep: Optional[List[socket.socket]]) -> None:
    try:
        events = session.advance()
    except (OSError, BenchError) as error:
        selector.unregister(session.sock)
        session.sock.close()
        result.fail(error)
        return
    if events:
        selector.modify(session.sock, events, session)
        return
    selector.unregister(session.sock)
    result.completed += 1
    if keep is None:
        session.sock.close()
    else:
        keep.append(session.sock)


# -- the calls a client process runs (each takes the process's held sockets first) -----------

IDLE_CONNECT_CONCURRENCY = 1024
BUSY_CONNECT_CONCURRENCY = 256
BUSY_PAYLOAD = bytes(range(256)) * 16  # 4 KiB each massclose connection echoes before it idles
STREAM_REQUEST = b"GET /stream\r\n\r\n"  # any bytes start the origin's stream
ABORTIVE_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, no TIME_WAIT


def open_idle(held: Held, proxy_port: int, count: int, deadline_seconds: float) -> Dict[str, Any]:
    """``count`` TCP connections to the proxy that send nothing, kept as ``held["idle"]``."""
    kept = held.setdefault("idle", [])
    return run_sessions((LOOPBACK, proxy_port), (), count, IDLE_CONNECT_CONCURRENCY,
                        deadline_seconds, kept).summary()


def open_busy(held: Held, proxy_port: int, target: Address, count: int,
              deadline_seconds: float) -> Dict[str, Any]:
    """``count`` connections through the proxy, each echoing 4 KiB, kept as ``held["busy"]``."""
    kept = held.setdefault("busy", [])
    return run_sessions((LOOPBACK, proxy_port), socks_echo_exchanges(target, BUSY_PAYLOAD), count,
                        BUSY_CONNECT_CONCURRENCY, deadline_seconds, kept).summary()


def burst(held: Held, proxy_port: Optional[int], target: Address, count: int, size: int,
          deadline_seconds: float) -> Dict[str, Any]:
    """``count`` concurrent echoes of ``size`` bytes through the proxy (or, with no proxy
    port, straight to ``target``), each closed when its echo is back."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    if proxy_port is None:
        dial, exchanges = target, echo_exchanges(payload)
    else:
        dial, exchanges = (LOOPBACK, proxy_port), socks_echo_exchanges(target, payload)
    return run_sessions(dial, exchanges, count, count, deadline_seconds).summary()


def open_stalled(held: Held, proxy_port: int, target: Address, count: int,
                 deadline_seconds: float) -> Dict[str, Any]:
    """``count`` downloads from the origin's stream port that are never read, kept as
    ``held["stalled"]``."""
    kept = held.setdefault("stalled", [])
    result = SessionsResult()
    deadline = time.monotonic() + deadline_seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        try:
            sock = socks5_connect(proxy_port, target, timeout=ECHO_TIMEOUT)
        except (OSError, BenchError) as error:
            result.fail(error)
            continue
        try:
            sock.sendall(STREAM_REQUEST)
        except OSError as error:
            sock.close()
            result.fail(error)
            continue
        kept.append(sock)
        result.completed += 1
    result.failed = count - result.completed  # those not started by the deadline too
    return result.summary()


def count_closed(held: Held, key: str) -> int:
    """How many of ``held[key]`` the peer has closed (readable, and EOF or an error)."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in held.get(key, [])}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    closed = 0
    for fd, _ in poller.poll(0):
        try:
            closed += by_fd[fd].recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1  # reset
    return closed


def close_held(held: Held, key: str, abortive: bool = False) -> int:
    """Close every socket of ``held[key]`` (``abortive``: with RST, leaving no TIME_WAIT)."""
    socks = held.pop(key, [])
    for sock in socks:
        if abortive:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORTIVE_LINGER)
            except OSError:
                pass
        sock.close()
    return len(socks)


def timed_requests(held: Held, proxy_port: int, target: Address, count: int,
                   deadline_seconds: float) -> Dict[str, Any]:
    """``count`` normal requests one after another (those not started by the deadline are
    left out): each one's ms, or its error."""
    latencies: List[float] = []
    errors: List[str] = []
    deadline = time.monotonic() + deadline_seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        try:
            echo_request(proxy_port, target)
            latencies.append((time.perf_counter() - started) * 1000)
        except (OSError, BenchError) as error:
            errors.append(f"{type(error).__name__}: {error}")
    return {"latencies_ms": latencies, "errors": errors}


def close_then_requests(held: Held, key: str, proxy_port: int, target: Address, count: int,
                        deadline_seconds: float) -> Dict[str, Any]:
    """Close all of ``held[key]`` at once, then at once make ``timed_requests``; with the
    close's start and end on the monotonic clock (one clock for every process on Linux)."""
    started = time.monotonic()
    closed = close_held(held, key)
    ended = time.monotonic()
    return {"closed": closed, "close_started": started, "close_ended": ended,
            **timed_requests(held, proxy_port, target, count, deadline_seconds)}


# -- child processes -------------------------------------------------------------------------

PROCESS_START_TIMEOUT = 30.0
PROCESS_STOP_TIMEOUT = 5.0
SAMPLE_INTERVAL = 0.02


def raise_fd_soft_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _serve_calls(conn: Any) -> None:
    """A client process: run each ``(function, args)`` the bench sends as
    ``function(held, *args)`` and send back ``(True, value)`` or ``(False, error)``, until
    ``None``."""
    raise_fd_soft_limit()
    held: Held = {}
    try:
        while True:
            message = conn.recv()
            if message is None:
                return
            function, args = message
            try:
                reply = (True, function(held, *args))
            except Exception as error:  # the bench reports it; this process stays up
                reply = (False, f"{type(error).__name__}: {error}")
            conn.send(reply)
    except (EOFError, KeyboardInterrupt):
        return  # the bench went away
    finally:
        for key in list(held):
            close_held(held, key, abortive=True)


class LoadProcess:
    """A spawned child running ``target(conn, *args)``; the bench talks to it over ``conn``."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any):
        self.name = name
        context = multiprocessing.get_context("spawn")  # nothing of the bench's state comes along
        self._conn, child = context.Pipe()
        self._process = context.Process(target=target, args=(child, *args), name=name, daemon=True)
        self._process.start()
        child.close()

    def send(self, message: Any) -> None:
        self._conn.send(message)

    def receive(self, timeout: float, tick: Optional[Callable[[], None]] = None) -> Any:
        """The next message; ``tick()`` runs every ``SAMPLE_INTERVAL`` while waiting."""
        deadline = time.monotonic() + timeout
        while not self._conn.poll(SAMPLE_INTERVAL):
            if tick is not None:
                tick()
            if not self._process.is_alive():
                raise BenchError(f"{self.name} exited with {self._process.exitcode}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: no answer in {timeout:g} s")
        return self._conn.recv()

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass  # already gone
        self._process.join(PROCESS_STOP_TIMEOUT)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(PROCESS_STOP_TIMEOUT)
        self._conn.close()


class ClientProcess(LoadProcess):
    """A client process: ``call(open_idle, port, ...)`` runs ``open_idle(held, port, ...)`` there."""

    def __init__(self, name: str):
        super().__init__(name, _serve_calls)

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        self.send((function, args))

    def sampled_call(self, sampler: Callable[[], None], function: Callable[..., Any], *args: Any,
                     timeout: float) -> Any:
        """``call`` with ``sampler()`` before, every ``SAMPLE_INTERVAL`` while it runs, and after."""
        sampler()
        self.submit(function, *args)
        result = self.result(timeout, tick=sampler)
        sampler()
        return result

    def result(self, timeout: float, tick: Optional[Callable[[], None]] = None) -> Any:
        ok, value = self.receive(timeout, tick)
        if not ok:
            raise BenchError(f"{self.name}: {value}")
        return value

    def call(self, function: Callable[..., Any], *args: Any, timeout: float) -> Any:
        self.submit(function, *args)
        return self.result(timeout)


# -- the origin: an echo port and a stream port in one selector loop -------------------------

ORIGIN_BACKLOG = 4096
ORIGIN_ACCEPTS_PER_EVENT = 256
STREAM_BLOCK = bytes(range(256)) * 1024  # 256 KiB, sent over and over
# A stream stops after this much, so a proxy that buffered without bound cannot take all of
# the machine's memory. Kernel buffers alone hold up to ~40 MiB of a stream here (the
# proxy's upstream receive buffer autotunes up to tcp_rmem's 32 MiB while it still reads,
# plus two 4 MiB send buffers), so a stream that reaches the cap means the proxy itself
# holds the rest; the origin counts them.
STREAM_CAP = 64 * MIB


class _OriginConnection:
    __slots__ = ("sock", "kind", "pending", "sent")

    def __init__(self, sock: socket.socket, kind: str):
        self.sock = sock
        # "echo"; or "stream" (waiting for its request), then "streaming", then "capped"
        self.kind = kind
        self.pending = memoryview(b"")
        self.sent = 0


class _Origin:
    def __init__(self, stream_cap: int):
        self.stream_cap = stream_cap
        self.selector = selectors.DefaultSelector()
        self.stats = {"accepted": 0, "active": 0, "stream_bytes": 0, "streams_capped": 0}
        self.block = memoryview(STREAM_BLOCK)
        self.ports = (self._listen("echo"), self._listen("stream"))

    def _listen(self, kind: str) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        listener.listen(ORIGIN_BACKLOG)
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, kind)
        return int(listener.getsockname()[1])

    def handle(self, key: selectors.SelectorKey) -> None:
        if isinstance(key.data, str):
            self._accept(key.fileobj, key.data)  # type: ignore[arg-type]
            return
        connection: _OriginConnection = key.data
        try:
            self._serve(connection)
        except OSError:
            self._close(connection)

    def _accept(self, listener: socket.socket, kind: str) -> None:
        for _ in range(ORIGIN_ACCEPTS_PER_EVENT):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of fds: leave the rest in the backlog a moment
                note(f"origin: accept failed: {error}")
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.selector.register(sock, selectors.EVENT_READ, _OriginConnection(sock, kind))
            self.stats["accepted"] += 1
            self.stats["active"] += 1

    def _serve(self, connection: _OriginConnection) -> None:
        if connection.pending:  # an echo waiting for room
            connection.pending = connection.pending[connection.sock.send(connection.pending):]
            if not connection.pending:
                self.selector.modify(connection.sock, selectors.EVENT_READ, connection)
        elif connection.kind == "streaming":
            self._send_stream(connection)
        else:
            data = connection.sock.recv(RECV_SIZE)
            if not data:
                self._close(connection)
            elif connection.kind == "echo":
                self._echo(connection, data)
            elif connection.kind == "stream":  # the request: the stream starts
                connection.kind = "streaming"
                self.selector.modify(connection.sock, selectors.EVENT_WRITE, connection)

    def _echo(self, connection: _OriginConnection, data: bytes) -> None:
        try:
            sent = connection.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):  # stop reading until the echo is out
            connection.pending = memoryview(data)[sent:]
            self.selector.modify(connection.sock, selectors.EVENT_WRITE, connection)

    def _send_stream(self, connection: _OriginConnection) -> None:
        offset = connection.sent % len(self.block)
        try:
            sent = connection.sock.send(self.block[offset:])
        except BlockingIOError:
            return
        connection.sent += sent
        self.stats["stream_bytes"] += sent
        if connection.sent >= self.stream_cap:
            connection.kind = "capped"  # now only waits for the close
            self.stats["streams_capped"] += 1
            self.selector.modify(connection.sock, selectors.EVENT_READ, connection)

    def _close(self, connection: _OriginConnection) -> None:
        self.selector.unregister(connection.sock)
        connection.sock.close()
        self.stats["active"] -= 1

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            if isinstance(key.fileobj, socket.socket):  # not the bench's pipe
                key.fileobj.close()
        self.selector.close()


def _serve_origin(conn: Any, stream_cap: int) -> None:
    """The origin process: sends its (echo, stream) ports, then serves until ``None``;
    ``"stats"`` is answered with its counters."""
    raise_fd_soft_limit()
    origin = _Origin(stream_cap)
    try:
        conn.send(origin.ports)
        origin.selector.register(conn.fileno(), selectors.EVENT_READ, None)
        while True:
            for key, _ in origin.selector.select(timeout=1.0):
                if key.data is not None:
                    origin.handle(key)
                    continue
                message = conn.recv()
                if message is None:
                    return
                conn.send(dict(origin.stats))
    except (EOFError, KeyboardInterrupt):
        return
    finally:
        origin.close()


class OriginProcess(LoadProcess):
    def __init__(self, stream_cap: int = STREAM_CAP):
        super().__init__("bench-origin", _serve_origin, stream_cap)
        echo_port, stream_port = self.receive(PROCESS_START_TIMEOUT)
        self.echo: Address = (LOOPBACK, echo_port)
        self.stream: Address = (LOOPBACK, stream_port)

    def stats(self) -> Dict[str, int]:
        self.send("stats")
        return self.receive(PROCESS_START_TIMEOUT)  # type: ignore[no-any-return]


# -- measuring a proxy from outside ----------------------------------------------------------

@dataclass(frozen=True)
class LoadSizes:
    """How much load each scenario puts on; ``QUICK_SIZES`` for ``--quick``."""

    idle_connections: int = 10_000
    requests: int = 50  # normal requests among the idle connections
    massclose_connections: int = 2_000
    teardown_requests: int = 20
    stalled_downloads: int = 100
    burst_echoes: int = 1_000
    burst_bytes: int = 64 * KIB
    # A baseline is taken once the proxy's thread count has held still this long (v2sync
    # parks a finished thread for 2 s before it ends).
    quiet_seconds: float = 2.5


QUICK_SIZES = LoadSizes(idle_connections=1_000, requests=20, massclose_connections=500,
                        stalled_downloads=50, burst_echoes=200)

WARMUP_REQUESTS = 5
OPEN_DEADLINE = 30.0
REQUESTS_DEADLINE = 30.0
BURST_DEADLINE = 60.0
CALL_SLACK = 30.0  # on top of a call's own deadline, before the bench gives up on the process
SETTLE_SECONDS = 1.0
QUIET_POLL_SECONDS = 0.1
QUIET_BOUND = 15.0
RSS_NOISE_KIB = 512  # RSS growth below this does not end a quiet spell
STALL_QUIET_SECONDS = 3.0  # stalled downloads: settled after this long without RSS growth
STALL_BOUND = 60.0
TEARDOWN_TARGET_SECONDS = 5.0  # massclose: threads are also read this long after the close
TEARDOWN_BOUND = 30.0
ORIGIN_DRAIN_SECONDS = 15.0


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    threads: int
    rss_kib: int


def sample(pid: int) -> Sample:
    return Sample(time.monotonic(), process_thread_count(pid), process_rss_kib(pid))


class Sampler:
    """Samples of process ``pid``, one per call (a ``tick`` while the bench waits)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: List[Sample] = []

    def __call__(self) -> None:
        self.samples.append(sample(self.pid))

    def peak_threads(self) -> Optional[float]:
        return float(max(s.threads for s in self.samples)) if self.samples else None

    def peak_rss_kib(self) -> Optional[int]:
        return max(s.rss_kib for s in self.samples) if self.samples else None


def quiet_sample(pid: int, quiet: float, bound: float = QUIET_BOUND) -> Tuple[Sample, Optional[float]]:
    """A sample once the thread count has not changed, and RSS not grown by more than
    ``RSS_NOISE_KIB``, for ``quiet`` seconds; and when that quiet spell began (None: no
    such spell within ``bound`` seconds, the sample is the last one taken)."""
    since = sample(pid)
    deadline = since.at + bound
    while True:
        time.sleep(QUIET_POLL_SECONDS)
        now = sample(pid)
        if now.threads != since.threads or now.rss_kib > since.rss_kib + RSS_NOISE_KIB:
            since = now
        if now.at - since.at >= quiet:
            return now, since.at
        if now.at > deadline:
            return now, None


def percentile(values: Sequence[float], percent: int) -> Optional[float]:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def _mib(kib: float) -> float:
    return kib / KIB


class LoadKit:
    """The origin and the two client processes a load scenario uses for each implementation
    in turn: ``holder`` holds the many connections, ``requester`` makes normal requests."""

    def __enter__(self) -> "LoadKit":
        self._processes: List[LoadProcess] = []
        try:
            self.origin = self._started(OriginProcess())
            self.holder = self._started(ClientProcess("bench-holder"))
            self.requester = self._started(ClientProcess("bench-requester"))
        except BaseException:
            self.close()
            raise
        return self

    def _started(self, process: Any) -> Any:
        self._processes.append(process)
        return process

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for process in reversed(self._processes):
            process.close()

    def warm_up(self, proxy_port: int) -> None:
        """A few requests first: lazy imports and first-use allocations."""
        result = self.requester.call(timed_requests, proxy_port, self.origin.echo, WARMUP_REQUESTS,
                                     REQUESTS_DEADLINE, timeout=REQUESTS_DEADLINE + CALL_SLACK)
        if result["errors"]:
            raise BenchError(f"warm-up request failed: {result['errors'][0]}")

    def requests(self, proxy_port: int, count: int, sampler: Sampler) -> List[float]:
        """``count`` normal requests from the requester, sampling the proxy meanwhile: the ms
        of those answered (the errors are printed)."""
        result = self.requester.sampled_call(sampler, timed_requests, proxy_port, self.origin.echo,
                                             count, REQUESTS_DEADLINE,
                                             timeout=REQUESTS_DEADLINE + ECHO_TIMEOUT + CALL_SLACK)
        _note_errors("request", result["errors"])
        return result["latencies_ms"]  # type: ignore[no-any-return]

    def wait_for_idle_origin(self) -> None:
        """Wait (bounded) until the proxy has closed its upstream legs: v2ray keeps one for
        uplinkOnly (1 s) after the client's close."""
        deadline = time.monotonic() + ORIGIN_DRAIN_SECONDS
        while self.origin.stats()["active"] > 0 and time.monotonic() < deadline:
            time.sleep(0.05)


def _note_errors(what: str, errors: Sequence[str]) -> None:
    if errors:
        note(f"{len(errors)} {what}(s) failed; the first: {errors[0]}")


def _note_opened(what: str, result: Dict[str, Any]) -> float:
    if result["failed"]:
        note(f"{result['failed']} {what} not opened; the first error: {result['first_error']}")
    return float(result["completed"])


def _request_figures(figures: Figures, latencies: Sequence[float], suffix: str = "") -> None:
    figures[f"answered{suffix}"] = float(len(latencies))
    figures[f"p50_ms{suffix}"] = percentile(latencies, 50)
    figures[f"p99_ms{suffix}"] = percentile(latencies, 99)


def measure_idle(kit: LoadKit, sizes: LoadSizes, proxy_port: int, pid: int, figures: Figures) -> None:
    """Requests alone, then the same requests while ``idle_connections`` that never send a
    byte are held: answered, p50/p99, the proxy's threads, and the RSS the idle ones add."""
    kit.warm_up(proxy_port)
    figures["threads_baseline"] = float(quiet_sample(pid, sizes.quiet_seconds)[0].threads)
    alone = Sampler(pid)
    _request_figures(figures, kit.requests(proxy_port, sizes.requests, alone), "_alone")
    figures["threads_alone"] = alone.peak_threads()
    before = quiet_sample(pid, sizes.quiet_seconds)[0]
    try:
        opened = kit.holder.call(open_idle, proxy_port, sizes.idle_connections, OPEN_DEADLINE,
                                 timeout=OPEN_DEADLINE + CALL_SLACK)
        figures["idle_opened"] = _note_opened("idle connections", opened)
        time.sleep(SETTLE_SECONDS)
        held = sample(pid)
        figures["threads_held"] = float(held.threads)
        figures["rss_added_mib"] = _mib(held.rss_kib - before.rss_kib)
        during = Sampler(pid)
        _request_figures(figures, kit.requests(proxy_port, sizes.requests, during))
        figures["threads_during"] = during.peak_threads()
        if figures["threads_during"] is not None and figures["threads_alone"] is not None:
            figures["threads_added"] = figures["threads_during"] - figures["threads_alone"]
        figures["idle_closed"] = float(kit.holder.call(count_closed, "idle", timeout=CALL_SLACK))
    finally:
        kit.holder.call(close_held, "idle", True, timeout=CALL_SLACK)


def measure_massclose(kit: LoadKit, sizes: LoadSizes, proxy_port: int, pid: int,
                      figures: Figures) -> None:
    """``massclose_connections`` relaying connections closed at once, then fresh requests at
    once: answered, p50/p99, and the seconds until the proxy's threads are back to baseline."""
    kit.warm_up(proxy_port)
    baseline = quiet_sample(pid, sizes.quiet_seconds)[0].threads
    figures["threads_baseline"] = float(baseline)
    sampler = Sampler(pid)
    try:
        opened = kit.holder.call(open_busy, proxy_port, kit.origin.echo, sizes.massclose_connections,
                                 OPEN_DEADLINE, timeout=OPEN_DEADLINE + CALL_SLACK)
        figures["opened"] = _note_opened("busy connections", opened)
        time.sleep(SETTLE_SECONDS)
        figures["threads_held"] = float(sample(pid).threads)
        result = kit.holder.sampled_call(sampler, close_then_requests, "busy", proxy_port,
                                         kit.origin.echo, sizes.teardown_requests, REQUESTS_DEADLINE,
                                         timeout=REQUESTS_DEADLINE + ECHO_TIMEOUT + CALL_SLACK)
    finally:
        kit.holder.call(close_held, "busy", timeout=CALL_SLACK)  # if the close never came
    _note_errors("teardown request", result["errors"])
    _request_figures(figures, result["latencies_ms"])
    figures["close_ms"] = (result["close_ended"] - result["close_started"]) * 1000
    back, later = _threads_after_close(sampler, baseline, result["close_started"])
    figures["seconds_to_baseline"] = back
    figures["threads_later"] = later


def _threads_after_close(sampler: Sampler, baseline: int, closed_at: float
                         ) -> Tuple[Optional[float], Optional[float]]:
    """Seconds from ``closed_at`` until the thread count is at ``baseline`` or below (None:
    not within ``TEARDOWN_BOUND``), and the count ``TEARDOWN_TARGET_SECONDS`` after it."""
    def back() -> Optional[float]:
        return next((s.at - closed_at for s in sampler.samples
                     if s.at >= closed_at and s.threads <= baseline), None)

    def later() -> Optional[float]:
        return next((float(s.threads) for s in sampler.samples
                     if s.at >= closed_at + TEARDOWN_TARGET_SECONDS), None)

    while (back() is None or later() is None) and time.monotonic() < closed_at + TEARDOWN_BOUND:
        time.sleep(SAMPLE_INTERVAL)
        sampler()
    return back(), later()


def measure_stalled(kit: LoadKit, sizes: LoadSizes, proxy_port: int, pid: int,
                    figures: Figures) -> None:
    """``stalled_downloads`` from the origin's endless stream, never read: the RSS the proxy
    adds once it has settled (no growth for ``STALL_QUIET_SECONDS``, within ``STALL_BOUND``)."""
    kit.warm_up(proxy_port)
    before = quiet_sample(pid, sizes.quiet_seconds)[0]
    origin_before = kit.origin.stats()
    try:
        opened = kit.holder.call(open_stalled, proxy_port, kit.origin.stream, sizes.stalled_downloads,
                                 OPEN_DEADLINE, timeout=OPEN_DEADLINE + CALL_SLACK)
        figures["opened"] = _note_opened("stalled downloads", opened)
        opened_at = time.monotonic()
        settled, quiet_since = quiet_sample(pid, STALL_QUIET_SECONDS, STALL_BOUND)
        if quiet_since is None:
            note(f"RSS still growing after {STALL_BOUND:g} s")
        figures["seconds_to_settle"] = None if quiet_since is None else max(0.0, quiet_since - opened_at)
        figures["rss_added_mib"] = _mib(settled.rss_kib - before.rss_kib)
        figures["kib_per_download"] = (settled.rss_kib - before.rss_kib) / max(1, opened["completed"])
        origin = kit.origin.stats()
        figures["origin_sent_mib"] = (origin["stream_bytes"] - origin_before["stream_bytes"]) / MIB
        figures["streams_capped"] = float(origin["streams_capped"] - origin_before["streams_capped"])
    finally:
        kit.holder.call(close_held, "stalled", True, timeout=CALL_SLACK)


def measure_burst(kit: LoadKit, sizes: LoadSizes, proxy_port: int, pid: int, figures: Figures) -> None:
    """``burst_echoes`` concurrent echoes of ``burst_bytes``: the wall time, against the same
    burst straight to the origin (what the client and origin alone take)."""
    kit.warm_up(proxy_port)
    before = quiet_sample(pid, sizes.quiet_seconds)[0]
    args = (kit.origin.echo, sizes.burst_echoes, sizes.burst_bytes, BURST_DEADLINE)
    floor = kit.holder.call(burst, None, *args, timeout=BURST_DEADLINE + CALL_SLACK)
    _note_opened("direct echoes", floor)
    figures["floor_seconds"] = floor["seconds"]
    kit.wait_for_idle_origin()
    sampler = Sampler(pid)
    result = kit.holder.sampled_call(sampler, burst, proxy_port, *args, timeout=BURST_DEADLINE + CALL_SLACK)
    figures["completed"] = _note_opened("echoes", result)
    figures["seconds"] = result["seconds"]
    figures["threads_peak"] = sampler.peak_threads()
    peak_rss = sampler.peak_rss_kib()
    figures["rss_peak_added_mib"] = None if peak_rss is None else _mib(peak_rss - before.rss_kib)
