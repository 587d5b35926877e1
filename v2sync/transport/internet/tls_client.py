"""The client end of TLS, on pyOpenSSL over the OpenSSL that ``cryptography`` carries.

Why not the ``ssl`` module, as the server end uses: a client parses and verifies the
server's certificate chain on every handshake, and that step sits on each new connection's
critical path (the Finished and the first data wait for it). Measured on 2 cores with the
bench's ECDSA P-256 chain, the client's second handshake step costs ~0.41 ms of CPU under
the system's OpenSSL 3.0 (its key decoders are rebuilt per certificate) and ~0.26 ms under
the OpenSSL 4 in cryptography's wheels; the TLS chain's p50 dropped ~6%. The server end
measured no gain (pyOpenSSL's per-call overhead ate it), so it stays on ``ssl``.

``ClientEngine`` shows ``TlsConnection`` the face it drives on the server end, an
``ssl.SSLObject`` between two ``ssl.MemoryBIO``\\ s: the same attribute names, the same
``ssl`` exceptions. So one connection class serves both ends.

Verification matches 4.34 (Go 1.15's crypto/tls): the chain must reach a trusted root, and
the name must be in the certificate's subjectAltName; the subject's CN is never used as a
host name, and a wildcard covers a whole leftmost label only.
"""
from __future__ import annotations

import ipaddress
import ssl
import time
from typing import Callable, List, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL, crypto

from v2sync.common.errors import TransportError
from v2sync.transport.internet.config import TlsSettings, client_alpn
from v2sync.transport.internet.tls import GO_TLS12_SUITES

# pyOpenSSL has no call for these three, so they go to the OpenSSL functions it is built
# on (the same library object): the expected server name, the verify result, the groups.
_lib = Binding.lib
_ffi = Binding.ffi

# The key-exchange groups Go 1.15 offers. OpenSSL 4 would put a post-quantum hybrid first,
# whose key share adds ~1.1 KiB to every ClientHello and ~75 µs of key generation.
GROUPS = b"X25519:P-256:P-384:P-521"
# The TLS 1.3 suites in the order 4.34's client offers them on a machine with AES
# instructions (captured from its ClientHello). OpenSSL's own order puts AES-256 first, so a
# server that takes the client's first choice (v2sync's) would run AES-256 and SHA-384 where
# Go's pair runs AES-128 and SHA-256: measured, 15 µs more per handshake on each end and a
# slower bulk cipher.
TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
# TLS 1.2, in Go 1.19's order for a CPU with AES instructions (3DES left out: OpenSSL has it no
# more): against a server that honours the client's order, AES-128 as with 4.34.
TLS12_SUITES = GO_TLS12_SUITES.encode("ascii")
_NO_PARTIAL_WILDCARDS = 0x4   # X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS
_NEVER_CHECK_SUBJECT = 0x20   # X509_CHECK_FLAG_NEVER_CHECK_SUBJECT: no CN fallback (Go 1.15)
_HOSTNAME_MISMATCH = 62       # X509_V_ERR_HOSTNAME_MISMATCH
_IP_MISMATCH = 64             # X509_V_ERR_IP_ADDRESS_MISMATCH
# Buffers the engine fills are used at once and only their filled part is copied out, so
# they need no zeroing (pyOpenSSL allocates the same way).
_alloc = _ffi.new_allocator(should_clear_after_alloc=False)
# Plaintext OpenSSL may still make from bytes it already took out of the incoming BIO (a
# record it began to read): at most one record's worth.
_RECORD_PLAINTEXT = 16 * 1024


def client_context(settings: TlsSettings, alpn: Sequence[str]) -> SSL.Context:
    """A client context (tls/config.go ``GetTLSConfig``): the roots are the system's unless
    ``disableSystemRoot``, plus every listed certificate, whatever its usage."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)  # as the ssl module's default
    # A peer closing without close_notify reads as EOF, as the server end treats it.
    context.set_options(SSL.OP_IGNORE_UNEXPECTED_EOF)
    # Go's client refuses a TLS 1.2 server's renegotiation ("tls: no renegotiation"); OpenSSL
    # ran a whole new handshake each time a server asked, 179 in 8 s (found by a review).
    context.set_options(SSL.OP_NO_RENEGOTIATION)
    # As the ssl module does: an idle connection gives back its record buffers (measured:
    # 14 KiB less per held connection).
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if settings.allow_insecure:
        context.set_verify(SSL.VERIFY_NONE)
    else:
        _trust(context, settings)
    if not settings.enable_session_resumption:  # Go's SessionTicketsDisabled: no ticket ext
        context.set_options(SSL.OP_NO_TICKET)
    _present(context, settings)
    context.set_cipher_list(TLS12_SUITES)
    context.set_alpn_protos(client_alpn(alpn))
    if _lib.SSL_CTX_set1_curves_list(context._context, GROUPS) != 1:
        raise TransportError(f"tls: this OpenSSL refuses the groups {GROUPS.decode()}")
    if _lib.SSL_CTX_set_ciphersuites(context._context, TLS13_SUITES) != 1:
        raise TransportError(f"tls: this OpenSSL refuses the suites {TLS13_SUITES.decode()}")
    return context


def _trust(context: SSL.Context, settings: TlsSettings) -> None:
    """Verify the server against the system's roots (unless ``disableSystemRoot``) and every
    listed certificate. Go puts each listed one in RootCAs, where any anchors a chain: an
    intermediate, or the server's own certificate, trusts what it signs or is."""
    context.set_verify(SSL.VERIFY_PEER)
    if not settings.disable_system_root:
        context.set_default_verify_paths()
    store = context.get_cert_store()
    if store is None:  # pyOpenSSL types it Optional; a new context always has one
        raise TransportError("tls: this OpenSSL context has no certificate store")
    for entry in settings.certificates:
        for cert in _pem_certificates(entry.certificate):
            store.add_cert(crypto.X509.from_cryptography(cert))
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)


def _present(context: SSL.Context, settings: TlsSettings) -> None:
    """A listed certificate with its key is this client's own, sent to a server that asks
    for one (mutual TLS), as Go's client sends one of ``Config.Certificates``; the first
    whose key matches, where Go takes the first the server's request accepts."""
    for pair in settings.key_pairs():
        if pair.key is None:
            continue
        chain = _pem_certificates(pair.certificate)
        try:
            context.use_certificate(crypto.X509.from_cryptography(chain[0]))
            context.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, pair.key))
            context.check_privatekey()
        except (SSL.Error, crypto.Error):
            continue  # 4.34: "ignoring invalid X509 key pair"
        for extra in chain[1:]:
            context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        return


def _pem_certificates(pem: bytes) -> List[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise TransportError(f"tls: a listed certificate is not valid PEM: {e}") from e


class ClientEngine:
    """One client end of a TLS connection over memory BIOs, no socket yet.

    Given ``session`` (a session a server gave this context before, for this name), the
    ClientHello offers to resume it: the server may then skip its certificate and
    signature, and this end their verification (a server that refuses makes it a full
    handshake, checked as ever). Against v2sync's own server it saved nothing measurable
    (1.39-1.46 against 1.45 ms a handshake and exchange): that server still makes a key
    share and two new tickets each time. It is here because 4.34 resumes.

    ``on_session`` is called once, when the connection ends, with its session: a TLS 1.3
    ticket arrives after the handshake, with the server's first bytes, so by then the
    session carries the latest one. (OpenSSL offers only a session that can be resumed, so
    one that cannot costs nothing.)
    """

    __slots__ = ("obj", "incoming", "outgoing", "server_name", "made", "on_session",
                 "_conn")

    def __init__(self, context: SSL.Context, server_name: Optional[str],
                 session: Optional[SSL.Session] = None):
        conn = SSL.Connection(context, None)  # None: memory BIOs
        conn.set_connect_state()
        if server_name:
            _expect_name(conn, server_name)
        if session is not None:
            conn.set_session(session)
        self.obj = _Session(conn, server_name)
        self.incoming = _Incoming(conn)
        self.outgoing = _Outgoing(conn)
        self.server_name = server_name
        self.made = time.monotonic()
        self.on_session: Optional[Callable[[SSL.Session], None]] = None
        self._conn = conn

    def read_batch(self, max_bytes: int) -> Tuple[bytes, bool]:
        """All the plaintext the engine can give now, up to ``max_bytes``, and whether the
        stream ended (close_notify, or the peer's plain close).

        One buffer and one copy for the lot, ``SSL_read`` called on it directly with its
        return code checked: 4.34's server sends every 2 KiB VMess chunk as a record of its
        own, and pyOpenSSL's ``recv`` costs an allocation, a copy and, when the bytes run
        out, a raised ``WantReadError`` per call. Errors other than "need more bytes" and
        the end go through pyOpenSSL's own checks, so they raise as ``_Session.read`` does.
        """
        conn = self._conn
        ssl_ = conn._ssl
        # Raw bytes waiting are an upper bound on the plaintext they carry.
        room = min(max_bytes, _lib.BIO_get_mem_data(conn._into_ssl, _ffi.NULL)
                   + _lib.SSL_pending(ssl_) + _RECORD_PLAINTEXT)
        buf = _alloc("char[]", room)
        got = 0
        ended = False
        while got < room:
            n = _lib.SSL_read(ssl_, buf + got, room - got)
            if n > 0:
                got += n
                continue
            code = _lib.SSL_get_error(ssl_, n)
            if code == _lib.SSL_ERROR_WANT_READ:
                break
            if code == _lib.SSL_ERROR_ZERO_RETURN:
                ended = True
                break
            try:
                self.obj.raise_for(n)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                ended = True  # the peer just closed the socket
                break
        return _ffi.buffer(buf, got)[:], ended

    def ending(self) -> None:
        """The connection ends: report its session (see the class), once."""
        report, self.on_session = self.on_session, None
        if report is None or not self._conn.get_peer_finished():
            return  # no session asked for, or no handshake completed
        session = self._conn.get_session()
        if session is not None:
            report(session)

    def resumed(self) -> bool:
        return bool(_lib.SSL_session_reused(self._conn._ssl))

    def say_hello(self) -> "ClientEngine":
        """Put the ClientHello in ``outgoing`` (once; later calls add nothing)."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass  # always: OpenSSL now waits for the server's flight
        return self


def _expect_name(conn: SSL.Connection, name: str) -> None:
    """SNI (for a domain) and the name the certificate must carry. A trailing dot is
    dropped from both, as Go sends and checks ``a.test.`` as ``a.test``."""
    name = name[:-1] if name.endswith(".") and len(name) > 1 else name
    param = _lib.SSL_get0_param(conn._ssl)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        try:
            raw = name.encode("idna")
        except UnicodeError as e:
            raise TransportError(f"tls: {name!r} is not a valid server name") from e
        conn.set_tlsext_host_name(raw)
        ok = _lib.X509_VERIFY_PARAM_set1_host(param, raw, len(raw))
    else:  # an IP literal: no SNI (RFC 6066), checked against IP subjectAltNames
        ok = _lib.X509_VERIFY_PARAM_set1_ip(param, address.packed, len(address.packed))
    _lib.X509_VERIFY_PARAM_set_hostflags(param, _NO_PARTIAL_WILDCARDS | _NEVER_CHECK_SUBJECT)
    if ok != 1:
        raise TransportError(f"tls: cannot check certificates for {name!r}")


class _Session:
    """The ``ssl.SSLObject`` calls ``TlsConnection`` makes, raising ``ssl``'s exceptions."""

    __slots__ = ("_conn", "_name")

    def __init__(self, conn: SSL.Connection, name: Optional[str]):
        self._conn = conn
        self._name = name

    def do_handshake(self) -> None:
        try:
            self._conn.do_handshake()
        except SSL.Error as e:
            raise self._translated(e) from None

    def read(self, max_bytes: int) -> bytes:
        try:
            return self._conn.recv(max_bytes)
        except SSL.Error as e:
            raise self._translated(e) from None

    def write(self, data) -> int:
        try:
            return self._conn.send(data)
        except SSL.Error as e:
            raise self._translated(e) from None

    def raise_for(self, result: int) -> None:
        """Raise what a failed engine call (its return code ``result``) means."""
        try:
            self._conn._raise_ssl_error(self._conn._ssl, result)
        except SSL.Error as e:
            raise self._translated(e) from None
        raise EngineError(f"the TLS engine failed (code {result}) without saying why")

    def unwrap(self) -> None:
        """Queue our close_notify (the peer's is not awaited)."""
        try:
            self._conn.shutdown()
        except SSL.Error as e:
            raise self._translated(e) from None

    def selected_alpn_protocol(self) -> Optional[str]:
        chosen = self._conn.get_alpn_proto_negotiated()
        return chosen.decode("ascii", "replace") if chosen else None

    def _translated(self, e: SSL.Error) -> ssl.SSLError:
        if isinstance(e, SSL.WantReadError):
            return ssl.SSLWantReadError("the TLS engine needs more bytes")
        if isinstance(e, SSL.ZeroReturnError):
            return ssl.SSLZeroReturnError("the peer sent close_notify")
        if isinstance(e, SSL.SysCallError):
            return ssl.SSLEOFError("the connection ended without close_notify")
        # With allowInsecure the result may say "untrusted" while something else failed.
        code = _lib.SSL_get_verify_result(self._conn._ssl)
        if code != 0 and self._conn.get_verify_mode() != SSL.VERIFY_NONE:  # 0: X509_V_OK
            return _verify_error(code, self._name)
        return EngineError(_reasons(e))


class EngineError(ssl.SSLError):
    """An ``ssl.SSLError`` made of pyOpenSSL's reasons. It reads as its words: a plain
    ``ssl.SSLError(text)`` prints as a tuple, ``('wrong version number',)``, which reached
    the log so (found by a review)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.reason = message

    def __str__(self) -> str:
        return self.reason


def _verify_error(code: int, name: Optional[str]) -> ssl.SSLCertVerificationError:
    if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        what = "IP address" if code == _IP_MISMATCH else "Hostname"
        message = f"{what} mismatch, certificate is not valid for {name!r}."
    else:
        message = _ffi.string(_lib.X509_verify_cert_error_string(code)).decode("ascii",
                                                                              "replace")
    error = ssl.SSLCertVerificationError(f"certificate verify failed: {message}")
    error.verify_code = code
    error.verify_message = message
    return error


def _reasons(e: SSL.Error) -> str:
    """pyOpenSSL's [(library, function, reason), ...] as one line."""
    entries = e.args[0] if e.args and isinstance(e.args[0], list) else []
    reasons = [entry[2] for entry in entries if isinstance(entry, tuple) and len(entry) == 3]
    return "; ".join(reasons) or str(e) or type(e).__name__


class _Incoming:
    """The ``MemoryBIO`` the socket's bytes go into."""

    __slots__ = ("_conn",)

    def __init__(self, conn: SSL.Connection):
        self._conn = conn

    def write(self, data: bytes) -> None:
        self._conn.bio_write(data)

    def write_eof(self) -> None:
        self._conn.bio_shutdown()


class _Outgoing:
    """The ``MemoryBIO`` records come out of. pyOpenSSL cannot say how much is waiting, so
    ``pending`` asks OpenSSL (``BIO_get_mem_data`` on a memory BIO gives its length), and
    ``read`` takes it all in one ``BIO_read``: no exception when it is empty, no pieces."""

    __slots__ = ("_conn", "_bio")

    def __init__(self, conn: SSL.Connection):
        self._conn = conn  # owns the BIO: kept alive as long as this holds its pointer
        self._bio = conn._from_ssl

    @property
    def pending(self) -> int:
        return _lib.BIO_get_mem_data(self._bio, _ffi.NULL)

    def read(self) -> bytearray:
        """Everything waiting, read straight into the buffer handed to the socket (a 1 MiB
        upload is 1 MiB of records: no second copy)."""
        size = self.pending
        if not size:
            return bytearray()
        out = bytearray(size)
        got = _lib.BIO_read(self._bio, _ffi.from_buffer(out), size)
        if got != size:  # a memory BIO gives what it holds
            raise TransportError(f"tls: read {got} of {size} bytes from the engine's BIO")
        return out
