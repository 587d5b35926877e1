"""The one exception tree of v2sync.

Everything v2sync raises on purpose derives from ``V2SyncError``. Foreign exceptions
(``OSError``, ``ssl.SSLError``, ``cryptography.exceptions.InvalidTag``...) are translated once,
at the boundary where they appear, with ``raise ... from e``.

An error class may carry what goes on the wire (h11's ``error_status_hint``), so a handler
can reply without an if-chain: ``RemoteProtocolError(..., reply=b"...")``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence


class V2SyncError(Exception):
    """Root of every error v2sync raises deliberately."""


class ConfigError(V2SyncError):
    """A config problem, located by file and JSON path (``inbounds[0].settings.auth``)."""

    def __init__(self, message: str, path: str = "", file: str = "", expected: str = ""):
        self.message = message
        self.path = path
        self.file = file
        self.expected = expected
        super().__init__(self.render())

    def render(self) -> str:
        where = ": ".join(p for p in (self.file, self.path) if p)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text} ({self.expected})" if self.expected else text

    def located(self, file: str = "", prefix: str = "") -> "ConfigError":
        """The same error with a file name and/or a path prefix added."""
        path = join_path(prefix, self.path) if prefix else self.path
        return ConfigError(self.message, path, file or self.file, self.expected)


class UnsupportedError(ConfigError):
    """A V2Ray feature or name v2sync does not implement. Raised per file while validating,
    but it counts only if the merged config still holds what it points at: 4.34 builds only
    the merged config, so a handler a later file replaces may use anything."""


class ConfigErrors(ConfigError):
    """Several config errors, reported together so the user fixes them in one pass."""

    def __init__(self, errors: Sequence[ConfigError]):
        self.errors = list(errors)
        super().__init__("\n".join(e.render() for e in self.errors))

    def render(self) -> str:  # the joined lines already carry their own locations
        return self.message


class ProtocolError(V2SyncError):
    """A peer or we broke a wire protocol. ``reply`` is what to send back, if anything."""

    def __init__(self, message: str, reply: Optional[bytes] = None):
        self.reply = reply
        super().__init__(message)


class LocalProtocolError(ProtocolError):
    """We were asked to emit something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes the protocol does not allow (garbage, oversize, bad version)."""


class HandshakeClosed(RemoteProtocolError):
    """The peer closed the connection before it finished its greeting; ``empty``: before it
    sent a byte (Go's io.EOF, where a cut greeting is io.ErrUnexpectedEOF)."""

    def __init__(self, message: str, empty: bool = False):
        super().__init__(message)
        self.empty = empty


class AuthenticationError(ProtocolError):
    """Credentials, a MAC or an AEAD tag did not check out."""


class UserNotFound(V2SyncError):
    """A user manager was asked to remove an email it does not hold (the API's error)."""


class UserExists(ConfigError):
    """A user manager was asked to add an email it already holds (in a config file, or
    through the API, which words it as the protocol's own Go package does)."""

    def __init__(self, message: str, email: str, path: str = "", expected: str = ""):
        super().__init__(message, path, expected=expected)
        self.email = email


class TransportError(V2SyncError):
    """Dialing, listening, reading or writing a connection failed."""


class NoServerReachable(TransportError):
    """Every try to reach an outbound's servers failed (4.34's "failed to find an available
    destination", which its VMess, VLESS, Trojan and Shadowsocks clients log at Warning: a
    user sees it at the default log level; its SOCKS and HTTP clients log it at Info)."""


class ServerHandshakeError(TransportError):
    """The handshake with an outbound's server failed: TLS, the WebSocket upgrade, a SOCKS
    server's answers. 4.34 logs these at Warning too (its outbounds mark a failed dial or
    first write ``AtWarning``): a server that refuses or drops its client is seen at the
    default log level."""


class PipeInterrupted(TransportError):
    """The pipe was aborted (``interrupt()``): the other side failed, stop at once."""


class PipeClosed(TransportError):
    """A write to a pipe whose reading side is gone or that was already closed."""


class HandshakeTimeout(TransportError):
    """The handshake deadline passed before the peer finished its greeting."""


# How far ``detached`` follows __cause__/__context__; real chains are two or three long.
MAX_CHAIN = 16


def detached(exc: BaseException) -> BaseException:
    """``exc`` with the tracebacks of it and its cause/context chain dropped, to keep as a value.

    A traceback holds its frames, and each frame holds its caller (``f_back``). A caller
    that keeps the exception in a local (``error = run_relay(...)``) closes a reference
    cycle through its own frame, and then a finished connection's frames, ciphers and
    buffers wait for the cyclic garbage collector instead of being freed at once: measured
    on the TLS latency chain, 100-180 objects a connection and most of the collector's work.
    Kept errors are reported by their message, so the tracebacks carried nothing used.
    """
    link: Optional[BaseException] = exc
    for _ in range(MAX_CHAIN):
        if link is None:
            break
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return exc


def join_path(prefix: str, path: str) -> str:
    """Join JSON path pieces: ``join_path("inbounds[0]", "port")`` -> ``inbounds[0].port``."""
    if not prefix:
        return path
    if not path:
        return prefix
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


# The longest a value quoted in a message is shown.
SHOWN_CHARS = 60


def shown(value: Any) -> str:
    """A JSON value as a message quotes it: scalars as written (cut to SHOWN_CHARS), arrays
    and objects as ``[...]`` and ``{...}``. Never ``repr`` a value a config gave: JSON may
    nest 10,000 deep (as Go reads it), and ``repr`` of that ends in RecursionError."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return "[...]"
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."
