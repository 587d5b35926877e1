"""TLS for any stream transport (v2ray ``transport/internet/tls``).

CPython deadlocks when one ``SSLSocket`` is read and written by two threads at once
(cpython#77271), and the relay is exactly such a thread pair. So TLS runs on an engine over
two memory BIOs: the socket is read and written by plain socket calls outside any lock, and
the engine is only touched under ``_state``. A second lock, ``_send``, keeps encrypted
records leaving in the order the engine produced them.

The server end's engine is an ``ssl.SSLObject`` (``MemoryTls``); the client end's is
``tls_client.ClientEngine`` (pyOpenSSL, see there why), which shows the same face.
Contexts are built once per handler (``ClientTls`` / ``ServerTls``); a connection costs one
engine.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from typing import (TYPE_CHECKING, Any, Callable, Dict, Generator, Iterator, List, Optional,
                    Sequence, Tuple, Union)

from v2sync.common.errors import HandshakeClosed, HandshakeTimeout, TransportError
from v2sync.common.net import Destination
from v2sync.common.task import outside_slot
from v2sync.transport.internet.config import CertificateEntry, TlsSettings, server_alpn
from v2sync.transport.internet.conn import (Connection, FinishOnFirstUse, WrappedConnection,
                                            arm_deadline, complete, hand_back_if_parked,
                                            is_parked, recv_waiting,
                                            send_waiting)
from v2sync.transport.internet.readiness import wait_readable

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from OpenSSL import SSL

    from v2sync.transport.internet.tls_client import ClientEngine

# tls/config.go: no "alpn" => h2 and http/1.1. Transports tweak this as 4.34 does
# (``WithNextProto``): see ``default_alpn`` in each transport.
DEFAULT_ALPN = ("h2", "http/1.1")
# The most plaintext one TLS record carries (RFC 8446 §5.1).
RECORD_PLAINTEXT = 16 * 1024
# Raw reads: one full TLS record plus header and tag, at least.
RECORD_READ = RECORD_PLAINTEXT + 512
# Go's net/http, serving TLS, answers a first record that looks like plaintext HTTP with this
# instead of an alert (server.go, tlsRecordHeaderLooksLikeHTTP); 4.34's WebSocket hub is such a
# server. Compared with the real binary in tests/scenarios/test_transport_bad_input.py.
HTTP_ON_TLS_PREFIXES = (b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO")
HTTP_ON_TLS_REPLY = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
# A ClientHello made ahead for the next dial is used within this many seconds or dropped:
# it carries an ephemeral private key, which should not outlive its moment.
SPARE_HELLO_TTL = 30.0
# Server names whose latest session a client context keeps for resumption (4.34: one LRU
# cache of 128 for the process, tls/config.go globalSessionCache; here one per outbound).
MAX_SESSIONS = 128
# Our own answers (KeyUpdates) a reader lets queue before it waits for the writer.
MAX_PENDING_ANSWERS = 256 * 1024
# Plaintext a write encrypts before it sends the records made so far (the slices are cut
# from each part's start, a multiple of the record size, so the records come out as they
# did). A writer stuck on a peer that does not read holds its records meanwhile: a 1 MiB
# write held its plaintext, the BIO's records and their copy for the socket.
WRITE_SLICE = 256 * 1024


class MemoryTls:
    """The server end's engine: an ``SSLObject`` over two memory BIOs, no socket yet."""

    __slots__ = ("obj", "incoming", "outgoing")

    def __init__(self, context: ssl.SSLContext):
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def read_batch(self, max_bytes: int) -> Tuple[bytes, bool]:
        """The plaintext buffered now (up to ``max_bytes``), and whether the stream ended."""
        parts: List[bytes] = []
        size = 0
        while size < max_bytes:
            try:
                # One record at most per call: asked for more, the ssl module would
                # allocate the whole request (up to RELAY_READ_SIZE) for 16 KiB.
                part = self.obj.read(min(max_bytes - size, RECORD_PLAINTEXT))
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b"".join(parts), True  # close_notify, or the peer just closed
            if not part:
                return b"".join(parts), True
            parts.append(part)
            size += len(part)
        return b"".join(parts), False


class ClientTls:
    """A client context per outbound (4.34 ``GetTLSConfig(WithDestination(dest))``)."""

    def __init__(self, settings: TlsSettings, default_alpn: Sequence[str] = DEFAULT_ALPN):
        # pyOpenSSL loads with the first TLS client: a process without one (a server, a
        # plain local proxy) starts ~50-75 ms sooner.
        from v2sync.transport.internet import tls_client
        self._engine_class = tls_client.ClientEngine
        self.settings = settings
        self.context = tls_client.client_context(settings, settings.alpn or default_alpn)
        self._spare: Optional[ClientEngine] = None  # the next dial's ClientHello, made ahead
        self._spare_lock = threading.Lock()
        # The latest resumable session each server name was given (ClientEngine).
        self._sessions: "OrderedDict[Optional[str], SSL.Session]" = OrderedDict()

    def server_name(self, dest: Destination, ip_as_name: bool = False) -> Optional[str]:
        """``serverName``, else the destination's domain; an IP gives none (as in Go), or
        with ``ip_as_name`` itself, checked against the certificate's IP addresses: 4.34's
        WebSocket client (gorilla's Dialer) names the server by its URL's host."""
        if self.settings.server_name:
            return self.settings.server_name
        if dest.address.is_domain or ip_as_name:
            return dest.address.value
        return None

    def wrap(self, conn: Connection, dest: Destination, deadline: float,
             ip_as_name: bool = False) -> "TlsConnection":
        name = self.server_name(dest, ip_as_name)
        if name is None and not self.settings.allow_insecure:
            raise TransportError(f"tls: cannot verify {dest.address} without a serverName "
                                 "(set tlsSettings.serverName, or allowInsecure)")
        tls = TlsConnection(conn, self._take_hello(name))
        tls.after_handshake = lambda: self._make_spare(name)
        return tls.start(deadline)

    def _take_hello(self, name: Optional[str]) -> ClientEngine:
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if (spare is not None and spare.server_name == name
                and time.monotonic() - spare.made < SPARE_HELLO_TTL):
            return spare
        return self._engine(name)  # start() makes its ClientHello

    def _engine(self, name: Optional[str]) -> ClientEngine:
        """A new engine; with ``enableSessionResumption`` (4.34: ``SessionTicketsDisabled``
        otherwise, on a client too) it offers the name's last session and keeps the next."""
        if not self.settings.enable_session_resumption:
            return self._engine_class(self.context, name)
        engine = self._engine_class(self.context, name, self._sessions.get(name))
        engine.on_session = lambda session: self._keep_session(name, session)
        return engine

    def _keep_session(self, name: Optional[str], session: SSL.Session) -> None:
        """Remember ``session`` for ``name``'s next dials (the last MAX_SESSIONS names)."""
        sessions = self._sessions
        sessions.pop(name, None)
        sessions[name] = session
        while len(sessions) > MAX_SESSIONS:
            sessions.popitem(last=False)

    def _make_spare(self, name: Optional[str]) -> None:
        """Make the next dial's ClientHello (a key pair, ~0.1-0.2 ms of OpenSSL CPU) now,
        while this connection waits for its server: the next dial sends it at once."""
        with self._spare_lock:
            if self._spare is not None:
                return
        try:
            spare = self._engine(name).say_hello()
        except (ssl.SSLError, TransportError):
            return  # the dial that needs one will make it, and report what fails
        with self._spare_lock:
            if self._spare is None:
                self._spare = spare


def quiet_server_name_errors() -> None:
    """A client whose SNI is not ASCII: CPython's SNI callback wrapper fails to decode it
    before ``ServerTls._pick`` is called, fails the handshake and prints a traceback to
    stderr (``sys.unraisablehook``), past the log level, once per such ClientHello. This
    makes it one Info line. (Go accepts such a name; OpenSSL under the ssl module cannot
    hand it over: the handshake still fails.) Other unraisable errors go on as before."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, UnicodeDecodeError) \
                and isinstance(unraisable.object, bytes):
            log.info("tls: a client sent a server name that is not ASCII (%r): refused",
                     unraisable.object[:64])
            return
        previous(unraisable)

    sys.unraisablehook = hook


class ServerTls:
    """A server context per inbound; several key pairs are picked by SNI, as Go does."""

    def __init__(self, settings: TlsSettings, default_alpn: Sequence[str] = DEFAULT_ALPN):
        alpn = server_alpn(settings.alpn) if settings.alpn else default_alpn
        pairs = [pair for pair in settings.key_pairs() if pair.key]
        self._by_name: Dict[str, ssl.SSLContext] = {}
        contexts = []
        for pair in pairs:
            context = _usable_context(settings, pair, alpn)
            if context is None:
                continue
            contexts.append(context)
            for name in _names(pair.certificate):
                self._by_name[name.lower()] = context  # a later certificate wins, as in Go
        if not contexts:  # 4.34 would start, and fail every handshake
            raise TransportError("tls: a server needs at least one certificate with its key")
        self.context = contexts[0]  # Go: the first certificate when no name matches
        # Always called: it records the name the client asked for (fallbacks select on it).
        self.context.sni_callback = self._pick
        self._several = len(contexts) > 1

    def _pick(self, obj, server_name: Optional[str], _context) -> Optional[int]:
        if not server_name:
            return None
        if server_name.endswith("."):  # Go's ClientHello parser refuses it (RFC 6066 §3)
            return ssl.ALERT_DESCRIPTION_UNEXPECTED_MESSAGE
        obj.v2sync_server_name = server_name  # an SSLObject has a __dict__; read by server_name
        if not self._several:
            return None
        name = server_name.lower()
        context = self._by_name.get(name) or self._by_name.get("*." + name.partition(".")[2])
        if context is not None:
            obj.context = context
        return None

    def wrap(self, conn: Connection, deadline: float) -> "TlsConnection":
        return complete(self.wrap_steps(conn, deadline))

    def wrap_steps(self, conn: Connection, deadline: float, answer_plain_http: bool = False
                   ) -> Generator[float, None, "TlsConnection"]:
        """``wrap`` as handshake steps: a parked connection waits in the selector.
        ``answer_plain_http``: serve as Go's net/http does (HTTP_ON_TLS_REPLY)."""
        tls = TlsConnection(conn, MemoryTls(self.context))
        tls.answer_plain_http = answer_plain_http
        yield from tls.handshake_steps(deadline)
        return tls


class TlsConnection(WrappedConnection):
    """TLS over a socket connection; one reader thread plus one writer thread, never
    deadlocking. Reads and writes go to the socket itself (TLS is always the first layer).

    A client sends its ClientHello when dialed (``start``) and finishes the handshake on
    first use, as Go's ``tls.Client`` does: the proxy builds its request while the server
    computes its answer, and the client's Finished leaves in one write with the first data.
    """

    def __init__(self, inner: Connection, tls: Union[MemoryTls, ClientEngine]):
        super().__init__(inner)
        self._tls = tls
        self._in = tls.incoming
        self._out = tls.outgoing
        self._obj = tls.obj
        self._state = threading.Lock()  # the SSLObject and both BIOs
        self._send = threading.Lock()   # records onto the socket, in order
        self._eof = False
        self._handshaken = False
        self._rest: Optional[FinishOnFirstUse] = None  # a started client handshake
        self._finish_by = float("inf")  # its deadline (monotonic)
        self.answer_plain_http = False  # see ServerTls.wrap_steps
        # A client's bulk reads are batched (conn.recv_waiting): the deployment of issue
        # 19, a client downloading from a Go server that sends one record per chunk.
        self._batched = not isinstance(tls, MemoryTls)
        self._first = b""  # the first bytes the peer sent, up to a record header's 5
        # Run once, after the handshake and the first write: work for the idle wait that
        # follows (ClientTls makes the next dial's ClientHello).
        self.after_handshake: Optional[Callable[[], None]] = None

    @property
    def alpn(self) -> Optional[str]:
        self.finish_handshake()
        return self._obj.selected_alpn_protocol()

    @property
    def server_name(self) -> str:
        """Server side: the name the client sent in SNI ("" if none); Go's
        ``ConnectionState().ServerName``."""
        return getattr(self._obj, "v2sync_server_name", "")

    def handshake_steps(self, deadline: float) -> Generator[float, None, None]:
        """Server: complete the handshake before ``deadline`` (monotonic) or raise. It
        reads first: before the ClientHello, OpenSSL could only ask for bytes."""
        with self._translated():
            yield from self._fill_steps(deadline)
            yield from self._complete_steps(deadline, True)

    def start(self, deadline: float) -> "TlsConnection":
        """Send the ClientHello; the handshake finishes, before ``deadline``, on first use."""
        with self._translated():
            self._hello()
        self._finish_by = deadline
        self._rest = FinishOnFirstUse(self.sock, self._finish)
        return self

    def cap_handshake(self, deadline: float) -> None:
        """4.34's SOCKS client sets its handshake deadline on the connection before its
        first write, in which Go's ``tls.Client`` makes the TLS handshake: so that deadline
        bounds this one too, not the dial's 16 s."""
        self._finish_by = min(self._finish_by, deadline)
        self.inner.cap_handshake(deadline)

    def _finish(self, flush: bool) -> None:
        with self._translated():
            complete(self._complete_steps(self._finish_by, flush))

    def finish_handshake(self) -> None:
        """Finish a started handshake now instead of on first use (no-op once done)."""
        if self._rest is not None:
            self._rest.run(True)

    def _hello(self) -> None:
        with self._state:
            # Only a client (ClientEngine) says hello; a no-op if made ahead.
            self._tls.say_hello()  # type: ignore[union-attr]
        self._flush(True)

    def _handshake_done(self) -> None:
        hook, self.after_handshake = self.after_handshake, None
        if hook is not None:
            hook()

    def _complete_steps(self, deadline: float, flush: bool) -> Generator[float, None, None]:
        while True:
            try:
                with self._state:
                    self._obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush(True)
                yield from self._fill_steps(deadline)
        if flush:
            self._flush(True)
        self._handshaken = True

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """Around a handshake step: what can go wrong becomes a TransportError. (A wait in
        the selector passes through: the step yields inside this block.)"""
        peer = self.remote
        try:
            yield
        except socket.timeout as e:
            raise HandshakeTimeout(f"tls handshake with {peer} timed out") from e
        except ssl.SSLError as e:
            if self.answer_plain_http and self._first in HTTP_ON_TLS_PREFIXES:
                self._send_quietly(HTTP_ON_TLS_REPLY)  # instead of an alert, as net/http does
            else:
                self._flush_quietly()  # the alert tells the peer why
            raise TransportError(f"tls handshake with {peer} failed: {_reason(e)}") from e
        except OSError as e:
            raise TransportError(f"tls handshake with {peer} failed: {e}") from e

    def _fill_steps(self, deadline: float) -> Generator[float, None, None]:
        while True:
            try:
                return self._fill(deadline)
            except BlockingIOError:
                yield deadline  # parked: wait in the selector for the peer's next flight

    def _fill(self, deadline: float) -> None:
        if not arm_deadline(self.sock, deadline):
            raise socket.timeout("handshake deadline")
        data = outside_slot(self.sock.recv, RECORD_READ)
        if not data and not self._first and isinstance(self._tls, MemoryTls):
            # A server's client that sent nothing (Go's io.EOF: VMess, VLESS and Trojan
            # write no access line for it). A client's server stays a TransportError.
            raise HandshakeClosed("connection closed before its tls handshake", empty=True)
        if not data:
            raise ConnectionResetError("connection closed during tls handshake")
        if len(self._first) < len(HTTP_ON_TLS_PREFIXES[0]):
            self._first += data[:len(HTTP_ON_TLS_PREFIXES[0]) - len(self._first)]
        with self._state:
            self._in.write(data)

    def recv(self, max_bytes: int) -> bytes:
        if self._rest is not None:
            self._rest.run(True)
            if self.after_handshake is not None:
                self._handshake_done()
        fed = False
        while True:
            data = self._decrypt(max_bytes)
            if data is not None:
                return data
            if fed:  # records without data (a KeyUpdate flood)
                hand_back_if_parked(self.sock, "tls records without data")
            raw = self._recv_raw(max_bytes)  # no lock held: writes go on
            with self._state:
                if raw:
                    self._in.write(raw)
                else:
                    self._in.write_eof()
            fed = True

    def _recv_raw(self, max_bytes: int) -> bytes:
        """Raw bytes for a read of ``max_bytes``: at least a whole record's worth.

        A small read (an idle or interactive connection: the relay's read size has dropped)
        first waits for bytes without a buffer, then reads what came. ``sock.recv`` makes
        its buffer before it blocks, so a connection parked in it held RECORD_READ (16.5
        KiB) for as long as it idled."""
        size = max(max_bytes, RECORD_READ)
        sock = self.sock
        if max_bytes >= RECORD_READ or self.read_timeout_armed:
            # Armed (a relay reader that parks): the read blocks at most the park timeout,
            # and the buffer goes with the read when the reader parks.
            return recv_waiting(self, size, self._batched)
        try:
            return sock.recv(size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            timeout = sock.gettimeout()
            if timeout == 0.0:
                raise  # parked in the handshake selector: it waits, not this thread
        if not outside_slot(wait_readable, sock, timeout):
            raise socket.timeout("timed out")
        return sock.recv(size)

    def _decrypt(self, max_bytes: int) -> Optional[bytes]:
        """Plaintext already buffered (up to ``max_bytes``), b"" at EOF, None: need bytes."""
        data = b""
        with self._state:
            if not self._eof:
                data, self._eof = self._tls.read_batch(max_bytes)
            pending = self._out.pending
        if pending > MAX_PENDING_ANSWERS:
            self._answers_backed_up()
        elif pending:
            self._flush(False)  # e.g. a KeyUpdate answer; never wait behind a writer
        if data:
            return data
        return b"" if self._eof else None

    def _answers_backed_up(self) -> None:
        """Our answers (KeyUpdates) queue behind a writer stuck on a peer that does not
        read: wait for it, as Go's ``handleKeyUpdate`` takes the write lock, so the peer's
        flood stops at its own socket; it grew without bound (found by a review). In the
        handshake selector nobody else writes, and nothing may wait: the peer is refused."""
        if is_parked(self.sock):
            raise TransportError(f"tls: {MAX_PENDING_ANSWERS} bytes of answers to a peer "
                                 "that does not read")
        self._flush(True)

    def sendall(self, data: bytes) -> None:
        self.sendall_parts((data,))

    def sendall_parts(self, parts: Sequence[bytes]) -> None:
        """Each part is encrypted as it is (records never span two parts) and sent, the
        records flushed every WRITE_SLICE of plaintext (with the client's Finished first,
        when this write finishes the handshake)."""
        if self._rest is not None:
            self._rest.run(False)  # the Finished waits in the BIO for this write's flush
        for batch in _slices(parts):
            with self._state:
                for piece in batch:
                    while piece:
                        piece = piece[self._obj.write(piece):]
            self._flush(True)
        if self.after_handshake is not None:
            self._handshake_done()

    def _flush(self, block: bool) -> None:
        """Send what the SSLObject produced. Non-blocking callers leave it to the thread
        holding ``_send``, which checks again after releasing it."""
        while outside_slot(self._send.acquire, block) if block else self._send.acquire(False):
            try:
                while True:
                    with self._state:
                        out = self._out.read()
                    if not out:
                        break
                    send_waiting(self.sock, out)
            finally:
                self._send.release()
            with self._state:
                if not self._out.pending:
                    return
            block = False

    def send_now(self, data: bytes) -> None:
        """``Connection.send_now``: encrypted and sent if no writer is mid-send (records
        must not interleave) and the socket takes it at once. A reader answering a flood
        of KeyUpdates to a peer that does not read holds ``_send`` for as long as that
        peer likes; a WebSocket's close frame sent from an abort waited for it on the
        timer wheel's thread, and every timer of the process with it (found by a review)."""
        if not self._handshaken or not self._send.acquire(False):
            return
        try:
            with self._state:
                while data:
                    data = data[self._obj.write(data):]
            self._flush_quietly()
        except (ssl.SSLError, ValueError):
            pass  # the engine is done: nothing more goes out
        finally:
            self._send.release()

    def _flush_quietly(self) -> None:
        with self._state:
            out = self._out.read()
        self._send_quietly(out)

    def _send_quietly(self, out: bytes) -> None:
        try:
            if out:
                self.sock.send(out, socket.MSG_DONTWAIT)
        except OSError:
            pass

    def _release(self) -> None:
        if self._handshaken:
            self._say_goodbye()
            ending = getattr(self._tls, "ending", None)  # a client engine keeps its session
            if ending is not None:
                ending()
        super()._release()

    def abort(self) -> None:
        """close_notify first, as Go's ``Close`` sends it when a relay ends: after the
        shutdown it failed, and a strict client saw an unexpected EOF after all its data
        (found by a review). Not while a writer is mid-send: records must not interleave."""
        if self._handshaken and self._send.acquire(False):
            try:
                self._say_goodbye()
            finally:
                self._send.release()
        super().abort()

    def say_goodbye(self) -> None:
        """close_notify now, before an ``abort`` ends the connection the way Go's
        ``tls.Conn.Close`` does (``close`` sends it anyway)."""
        if self._handshaken:
            self._say_goodbye()

    def _say_goodbye(self) -> None:
        """Best-effort close_notify (Go's tls.Conn.Close sends one); never blocks."""
        try:
            with self._state:
                self._obj.unwrap()
        except (ssl.SSLError, ValueError):
            pass  # SSLWantReadError: ours is queued; the peer's is not awaited
        self._flush_quietly()


def _slices(parts: Sequence[bytes]) -> Iterator[List[memoryview]]:
    """The parts in batches of at least WRITE_SLICE bytes (the last may be less), each
    piece at most WRITE_SLICE and cut from its part's start, so records come out as they
    would from the whole part. One batch for a write under WRITE_SLICE."""
    batch: List[memoryview] = []
    size, batches = 0, 0
    for part in parts:
        view = memoryview(part)
        while view:
            piece, view = view[:WRITE_SLICE], view[WRITE_SLICE:]
            batch.append(piece)
            size += len(piece)
            if size >= WRITE_SLICE:
                yield batch
                batch, size, batches = [], 0, batches + 1
    if batch or not batches:  # an empty write still flushes (a handshake's Finished)
        yield batch


def _reason(e: ssl.SSLError) -> str:
    return getattr(e, "verify_message", None) or getattr(e, "reason", None) or str(e)


# Go 1.19's default TLS 1.2 suites, as its client offers them (tls_client.TLS12_SUITES;
# 3DES left out: OpenSSL 3 has it no more at the default security level).
GO_TLS12_SUITES = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                   "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                   "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                   "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
                   "ECDHE-RSA-AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA:AES256-SHA")
IGNORE_UNEXPECTED_EOF = getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF",
                                0x80 if ssl.OPENSSL_VERSION_INFO >= (3,) else 0)


def _usable_context(settings: TlsSettings, pair: CertificateEntry,
                    alpn: Sequence[str]) -> Optional[ssl.SSLContext]:
    """A pair whose key does not match its certificate is left out with a warning, as
    4.34's BuildCertificates does ("ignoring invalid X509 key pair")."""
    try:
        return _server_context(settings, pair, alpn)
    except TransportError as e:
        log.warning("tls: ignoring invalid X509 key pair: %s", e)
        return None


def _server_context(settings: TlsSettings, pair: CertificateEntry,
                    alpn: Sequence[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_pair(context, pair)
    context.set_alpn_protocols(list(alpn))
    # The client's first choice of suite, not OpenSSL's (AES-256 first). 4.34's server takes
    # AES-128 unless the client puts ChaCha20 first; the ssl module cannot order TLS 1.3
    # suites, so this matches it for every client that offers AES-128 or ChaCha20 first (Go's,
    # v2sync's) and differs for one that puts AES-256 first (OpenSSL's default: curl).
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # TLS 1.2: the suites Go 1.19's server takes (CBC with SHA-1 and RSA key exchange
    # included, CBC with SHA-256/384 not), where the ssl module's default set differs.
    context.set_ciphers(GO_TLS12_SUITES)
    # A client's FIN without close_notify reads as EOF, and the answer can still be sent,
    # as from Go's server; without it OpenSSL takes the FIN as an error that fails every
    # write after it, so a client that sent its request and shut down its side lost the
    # answer. (Python 3.9 has no name for the OpenSSL 3 option.)
    context.options |= IGNORE_UNEXPECTED_EOF
    if not settings.enable_session_resumption:  # 4.34: SessionTicketsDisabled by default
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    return context


def _load_pair(context: ssl.SSLContext, pair: CertificateEntry) -> None:
    """``load_cert_chain`` takes only paths, so in-memory PEM goes through a private
    temporary file that is removed at once."""
    fd, path = tempfile.mkstemp(prefix="v2sync-cert-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pair.certificate.rstrip(b"\n") + b"\n" + (pair.key or b""))
        context.load_cert_chain(path)
    except ssl.SSLError as e:
        raise TransportError(f"tls: certificate and key do not match: {_reason(e)}") from e
    finally:
        os.unlink(path)


def _names(pem: bytes) -> List[str]:
    """The names SNI picks a certificate by, as Go's ``BuildNameToCertificate`` indexes
    it: its subject's common name, then its DNS subjectAltNames."""
    from cryptography import x509
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return []
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return names
    return names + sans.value.get_values_for_type(x509.DNSName)
