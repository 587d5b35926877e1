"""In-test origin servers: the far end of every scenario (v2ray ``testing/servers/``).

Each server is a context manager that binds port 0 on loopback, serves from named,
non-daemon threads and, on exit, closes every socket and joins every thread. pytest runs
with warnings as errors, so a socket left open (ResourceWarning) or a thread left running
fails the test that leaked it.

Everything is bounded: each accepted socket has a timeout, each server caps its concurrent
connections (extra ones are closed at once and counted in ``rejected``) and the bytes it
will read per connection. Expected network failures (resets, timeouts) end a connection
quietly; any other exception escapes its thread so pytest's thread-exception hook reports
it as a harness bug.
"""
from __future__ import annotations

import collections
import functools
import random
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

# v2ray's scenario tests XOR every echoed byte with 'c' (testing/scenarios/common.go::xor),
# so a relay that forwards the client's own bytes back unchanged is caught.
XOR_C = ord("c")

ACCEPT_POLL_SECONDS = 0.05  # how often an accept loop notices close()
JOIN_TIMEOUT_SECONDS = 5.0
DEFAULT_TIMEOUT_SECONDS = 10.0
RECV_SIZE = 64 * 1024
UDP_DATAGRAM_SIZE = 2048  # testing/servers/udp: a 2 KiB read per datagram
MIB = 1024 * 1024

# The deterministic byte pattern of /bytes/N and BulkSource: i % 251. A prime period never
# lines up with power-of-two buffer sizes, so a dropped or repeated chunk shows up.
PATTERN_PERIOD = 251
_PATTERN_BLOCK = bytes(i % PATTERN_PERIOD for i in range(PATTERN_PERIOD * 4096))  # ~1 MiB


def pattern_bytes(n: int) -> bytes:
    """The first ``n`` bytes of the deterministic pattern (byte i is ``i % 251``)."""
    whole, rest = divmod(n, len(_PATTERN_BLOCK))
    return _PATTERN_BLOCK * whole + _PATTERN_BLOCK[:rest]


def xor_bytes(data: bytes, key: int = XOR_C) -> bytes:
    """``data`` with every byte XORed with ``key``: what an XOR echo server sends back."""
    return data.translate(_xor_table(key))


@functools.lru_cache(maxsize=8)
def _xor_table(key: int) -> bytes:
    return bytes(i ^ key for i in range(256))


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# Ports for configs are picked below the kernel's ephemeral range. A port the kernel hands
# out for bind(0) may also be handed to any outgoing connection (a dial, a peer process)
# between the pick and the proxy's own bind ("Address already in use", seen in CI); ports
# below the range are only ever taken by an explicit bind.
CONFIG_PORT_FLOOR = 10000
PICK_ATTEMPTS = 200
# Ports handed out lately are not handed out again: two picks made before either is bound
# (a chain's server and client ports) were both free, and a draw could give the same number
# twice; the second process then failed to bind ("address already in use", seen in CI).
RECENT_PICKS = 4096
_recent: Deque[int] = collections.deque(maxlen=RECENT_PICKS)


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default start


def _bindable(host: str, port: int, kinds: Tuple[socket.SocketKind, ...]) -> bool:
    for kind in kinds:
        with socket.socket(_family(host), kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _pick_port(host: str, kinds: Tuple[socket.SocketKind, ...]) -> int:
    top = _ephemeral_floor() - 1
    if top > CONFIG_PORT_FLOOR:
        for _ in range(PICK_ATTEMPTS):
            port = random.randint(CONFIG_PORT_FLOOR, top)
            if port not in _recent and _bindable(host, port, kinds):
                _recent.append(port)
                return port
    with socket.socket(_family(host), kinds[0]) as sock:  # no room below the range
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def answer_and_close(server: socket.socket, count: int, answer: bytes = b"",
                     timeout: float = 10.0) -> threading.Thread:
    """A thread serving ``count`` connections on ``server`` (listening, with a timeout): each
    read once, answered with ``answer`` (if any) and closed. For peers that end first."""
    def serve() -> None:
        for _ in range(count):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(timeout)
                conn.recv(4096)
                if answer:
                    conn.sendall(answer)
    thread = threading.Thread(target=serve, name="answer-and-close", daemon=True)
    thread.start()
    return thread


def connect_loopback(port: int, timeout: float,
                     receive_buffer: Optional[int] = None) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port``; ``receive_buffer``: SO_RCVBUF set before
    the connect, so the window stays that small (a client that barely reads)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for TCP and UDP a moment ago (for configs that need a fixed port number;
    a SOCKS inbound with UDP binds both)."""
    return _pick_port(host, (socket.SOCK_STREAM, socket.SOCK_DGRAM))


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago."""
    return _pick_port(host, (socket.SOCK_DGRAM,))


class _TcpServer:
    """Accept loop plus one named thread per connection; ``close()`` joins them all."""

    def __init__(self, name: str, host: str, max_connections: int, timeout: float):
        self.name = name
        self.host = host
        self.port = 0
        self.max_connections = max_connections
        self.timeout = timeout
        self.accepted = 0
        self.rejected = 0
        self.bytes_received = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: Dict[int, socket.socket] = {}
        self._threads: List[threading.Thread] = []
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> None:
        listener = socket.socket(_family(self.host), socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, 0))
            listener.listen(min(self.max_connections, 1024))
            listener.settimeout(ACCEPT_POLL_SECONDS)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"{self.name}-accept", daemon=False
        )
        self._accept_thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                raise
            self._spawn(conn)

    def _spawn(self, conn: socket.socket) -> None:
        with self._lock:
            if len(self._conns) >= self.max_connections:
                self.rejected += 1
                conn.close()
                return
            index = self.accepted
            self.accepted += 1
            conn.settimeout(self.timeout)
            self._conns[index] = conn
            self._threads = [t for t in self._threads if t.is_alive()]
            thread = threading.Thread(
                target=self._serve, args=(index, conn), name=f"{self.name}-conn-{index}", daemon=False
            )
            self._threads.append(thread)
        thread.start()

    def _serve(self, index: int, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass  # reset, timeout or close() shutting the socket: the connection just ends
        finally:
            # Under the lock so close() never shuts down a socket this thread is closing.
            with self._lock:
                self._conns.pop(index, None)
                conn.close()

    def count_received(self, n: int) -> None:
        with self._lock:
            self.bytes_received += n

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        """Stop accepting, wake every connection thread, and join them all (bounded)."""
        self.stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(JOIN_TIMEOUT_SECONDS)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for conn in self._conns.values():
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv or sendall
                except OSError:
                    pass
            threads = list(self._threads)
        for thread in threads:
            thread.join(JOIN_TIMEOUT_SECONDS)
        alive = [t.name for t in threads + [self._accept_thread] if t is not None and t.is_alive()]
        if alive:
            raise RuntimeError(f"{self.name}: threads did not stop: {alive}")

    def __enter__(self) -> "_TcpServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class OneConnectionServer:
    """Accepts one connection on loopback and runs ``converse(conn)`` on it in a thread
    (``conn`` with ``timeout``); ``result`` is what it returned, or the OSError (a timeout
    too) that ended it. ``__exit__`` joins the thread, bounded."""

    def __init__(self, converse: Callable[[socket.socket], Any], timeout: float,
                 name: str = "one-connection"):
        self.converse = converse
        self.timeout = timeout
        self.result: Any = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(timeout)
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, name=name)

    def __enter__(self) -> "OneConnectionServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(self.timeout * 2)
        self.listener.close()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError as e:
            self.result = e
            return
        with conn:
            conn.settimeout(self.timeout)
            try:
                self.result = self.converse(conn)
            except OSError as e:
                self.result = e


class TcpEchoServer(_TcpServer):
    """Echoes every chunk back (XORed with ``xor`` if given) until the peer's EOF.

    ``send_first`` is written on accept (a server that speaks first, feature_test.go
    TestPassiveConnection); ``close_after_first`` closes after echoing one chunk, so the
    upstream closes before the client does.
    """

    def __init__(
        self,
        xor: Optional[int] = None,
        *,
        host: str = "127.0.0.1",
        send_first: Optional[bytes] = None,
        close_after_first: bool = False,
        max_connections: int = 64,
        max_bytes: int = 64 * MIB,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ):
        super().__init__("tcp-echo", host, max_connections, timeout)
        self.xor = xor
        self.send_first = send_first
        self.close_after_first = close_after_first
        self.max_bytes = max_bytes

    def __enter__(self) -> "TcpEchoServer":
        self.start()
        return self

    def handle(self, conn: socket.socket) -> None:
        if self.send_first:
            conn.sendall(self.send_first)
        received = 0
        while received < self.max_bytes:
            data = conn.recv(min(RECV_SIZE, self.max_bytes - received))
            if not data:
                return
            received += len(data)
            self.count_received(len(data))
            conn.sendall(data if self.xor is None else xor_bytes(data, self.xor))
            if self.close_after_first:
                return


class BulkSource(_TcpServer):
    """On connect, sends ``total_bytes`` of the pattern as fast as it can, then EOF."""

    def __init__(
        self,
        total_bytes: int,
        *,
        host: str = "127.0.0.1",
        max_connections: int = 16,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ):
        super().__init__("bulk-source", host, max_connections, timeout)
        self.total_bytes = total_bytes
        self._block = memoryview(_PATTERN_BLOCK)  # shared read-only buffer: no per-send copies

    def __enter__(self) -> "BulkSource":
        self.start()
        return self

    def handle(self, conn: socket.socket) -> None:
        remaining = self.total_bytes
        while remaining > 0 and not self.stopping.is_set():
            n = min(remaining, len(self._block))
            conn.sendall(self._block[:n])
            remaining -= n
        conn.shutdown(socket.SHUT_WR)
        # Wait for the client's close so unread bytes never turn our close into a reset.
        drained = 0
        while drained < RECV_SIZE:
            data = conn.recv(RECV_SIZE)
            if not data:
                return
            drained += len(data)


class BulkSink(_TcpServer):
    """On connect, reads ``total_bytes`` (checking nothing but the count), answers one byte
    (``SINK_DONE``) so the uploader can time the whole upload, then waits for EOF."""

    def __init__(
        self,
        total_bytes: int,
        *,
        host: str = "127.0.0.1",
        max_connections: int = 16,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ):
        super().__init__("bulk-sink", host, max_connections, timeout)
        self.total_bytes = total_bytes

    def __enter__(self) -> "BulkSink":
        self.start()
        return self

    def handle(self, conn: socket.socket) -> None:
        buffer = memoryview(bytearray(RECV_SIZE * 4))
        remaining = self.total_bytes
        while remaining > 0 and not self.stopping.is_set():
            received = conn.recv_into(buffer[:min(remaining, len(buffer))])
            if not received:
                return  # cut short: the uploader sees no SINK_DONE
            remaining -= received
        self.count_received(self.total_bytes - remaining)
        conn.sendall(SINK_DONE)
        while conn.recv(RECV_SIZE):  # until the uploader's close, so ours is not a reset
            pass


SINK_DONE = b"\x01"


@dataclass(frozen=True)
class RecordedRequest:
    """What HttpOrigin saw, so proxy tests can check forwarded headers."""

    method: str
    path: str
    headers: Tuple[Tuple[str, str], ...]
    body_length: int

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


RouteHandler = Callable[[BaseHTTPRequestHandler], None]


class _OriginHandler(BaseHTTPRequestHandler):
    """Routes of HttpOrigin; HTTP/1.1 with Content-Length on every reply, so keep-alive works."""

    protocol_version = "HTTP/1.1"
    server: "HttpOrigin"  # type: ignore[assignment]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        pass  # the default writes every request to stderr

    def do_GET(self) -> None:
        self._dispatch(b"")

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.reply(411, b"Length Required")
            return
        if int(length) > self.server.max_body:
            self.reply(413, b"Payload Too Large")
            self.close_connection = True
            return
        self._dispatch(self.rfile.read(int(length)))

    def _dispatch(self, body: bytes) -> None:
        self.server.record(RecordedRequest(self.command, self.path, tuple(self.headers.items()), len(body)))
        path = self.path.split("?", 1)[0]
        custom = self.server.routes.get(path)
        if custom is not None:
            custom(self)
        elif path == "/" and self.command == "GET":
            self.reply(200, b"Home")
        elif path.startswith("/bytes/") and self.command == "GET":
            self._send_pattern(path[len("/bytes/"):])
        elif path == "/echo" and self.command == "POST":
            self.reply(200, body, "application/octet-stream")
        elif path == "/slow" or path.startswith("/slow/"):
            self._slow(path[len("/slow/"):] if path.startswith("/slow/") else "")
        elif path == "/close":
            self.close_connection = True  # close without any response
        else:
            self.reply(404, b"Not Found")

    def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_pattern(self, count: str) -> None:
        if not count.isdigit() or int(count) > self.server.max_body:
            self.reply(400, b"bad size")
            return
        n = int(count)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        block = memoryview(_PATTERN_BLOCK)
        while n > 0:
            self.wfile.write(block[: min(n, len(block))])
            n -= min(n, len(block))

    def _slow(self, millis: str) -> None:
        delay = min(int(millis), HttpOrigin.MAX_SLOW_MS) / 1000 if millis.isdigit() else 0.5
        if not self.server.stopping.wait(delay):
            self.reply(200, b"slow")


class HttpOrigin(_TcpServer):
    """A tiny HTTP/1.1 origin (testing/servers/http): keep-alive, one thread per connection.

    Routes: ``GET /`` -> 200 ``Home``; ``GET /bytes/N`` -> N pattern bytes; ``POST /echo``
    -> the body back; ``/slow`` (or ``/slow/<ms>``) -> 200 ``slow`` after 0.5 s (or <ms>);
    ``/close`` -> the connection closes with no response; anything else 404. ``routes``
    adds exact-path handlers ``fn(handler)`` that win over the built-in ones.
    """

    MAX_SLOW_MS = 10_000

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        routes: Optional[Mapping[str, RouteHandler]] = None,
        max_connections: int = 64,
        max_body: int = 64 * MIB,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ):
        super().__init__("http-origin", host, max_connections, timeout)
        self.routes: Dict[str, RouteHandler] = dict(routes or {})
        self.max_body = max_body
        self._requests: Deque[RecordedRequest] = collections.deque(maxlen=256)

    def __enter__(self) -> "HttpOrigin":
        self.start()
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def requests(self) -> List[RecordedRequest]:
        """The most recent requests (at most 256), oldest first."""
        with self._lock:
            return list(self._requests)

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def handle(self, conn: socket.socket) -> None:
        _OriginHandler(conn, conn.getpeername(), self)  # serves the whole keep-alive connection


class UdpEchoServer:
    """Echoes each datagram (up to 2 KiB) to its sender, XORed with ``xor`` if given."""

    def __init__(self, xor: Optional[int] = None, *, host: str = "127.0.0.1", port: int = 0,
                 max_datagrams: int = 1_000_000, receive_buffer: int = 0):
        self.xor = xor
        self.host = host
        self.port = port  # 0: the kernel picks it at start()
        self.max_datagrams = max_datagrams
        self.receive_buffer = receive_buffer  # SO_RCVBUF; 0 keeps the kernel's default
        self.datagrams = 0
        self._stop = threading.Event()
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> None:
        sock = socket.socket(_family(self.host), socket.SOCK_DGRAM)
        try:
            if self.receive_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            sock.bind((self.host, self.port))
            sock.settimeout(ACCEPT_POLL_SECONDS)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="udp-echo", daemon=False)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set() and self.datagrams < self.max_datagrams:
            try:
                data, peer = self._sock.recvfrom(UDP_DATAGRAM_SIZE)
            except socket.timeout:
                continue
            self.datagrams += 1
            try:
                self._sock.sendto(data if self.xor is None else xor_bytes(data, self.xor), peer)
            except OSError:
                pass  # the peer's port is gone (ICMP unreachable): drop, as UDP would

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_SECONDS)
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("udp-echo thread did not stop")

    def __enter__(self) -> "UdpEchoServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
