"""Traffic sniffers (v2ray ``app/dispatcher/sniffer.go``, ``common/protocol/http/sniff.go``,
``common/protocol/tls/sniff.go``, ``common/protocol/bittorrent``). Pure: bytes in, verdict out.

Each sniffer looks at the first bytes a client sent and returns one of:

- a ``SniffResult(protocol, domain)``: ``http1`` with the Host header, ``tls`` with the
  ClientHello's SNI, ``bittorrent`` with no domain;
- ``NEED_MORE``: the bytes so far could still become this protocol;
- ``None``: not this protocol (or nothing usable in it).

``sniff`` tries HTTP, TLS, then BitTorrent, as 4.34 does, and returns the first result;
``NEED_MORE`` if some sniffer still waits. All of them run whatever ``destOverride`` says: the
protocol feeds ``protocol`` routing rules, and ``should_override`` decides separately whether
the sniffed domain replaces the target address (the port is kept).

A verdict depends only on the bytes, so re-sniffing the grown buffer is equivalent to 4.34
dropping the sniffers that said no. The caller (the dispatcher) applies the limits
``SNIFF_ATTEMPTS`` reads of ``SNIFF_READ_TIMEOUT`` into at most ``SNIFF_BUFFER_SIZE`` bytes,
and replays the bytes unchanged. Where we are stricter than 4.34 it is said at the spot.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union, cast

from v2sync.common.cursor import Cursor, NeedMore
from v2sync.common.net import go_address, go_parse_port

SNIFF_BUFFER_SIZE = 2048  # buf.Size: the sniff buffer's capacity
SNIFF_ATTEMPTS = 2  # default.go sniffer(): "totalAttempt > 2" gives up
SNIFF_READ_TIMEOUT = 0.1  # cachedReader.Cache: ReadMultiBufferTimeout(100 ms)

PROTOCOL_HTTP1 = "http1"
PROTOCOL_TLS = "tls"
PROTOCOL_BITTORRENT = "bittorrent"

# http/sniff.go: a request must start with one of these, compared case-insensitively. No
# space is required after it (4.34 checks the prefix only).
HTTP_METHODS = (b"get", b"post", b"head", b"put", b"delete", b"options", b"connect")
_LONGEST_METHOD = max(len(m) for m in HTTP_METHODS)
HTTP_HOST_HEADER = b"host"

TLS_RECORD_HEADER = 5
TLS_CONTENT_HANDSHAKE = 0x16
TLS_MAJOR_VERSION = 3  # tls/sniff.go IsValidTLSVersion: any 3.x
TLS_HANDSHAKE_CLIENT_HELLO = 0x01
TLS_RANDOM_LENGTH = 32
TLS_MAX_SESSION_ID = 32
TLS_EXTENSION_SERVER_NAME = 0x0000
SNI_HOST_NAME = 0x00

BITTORRENT_HANDSHAKE = b"\x13BitTorrent protocol"

_U16 = struct.Struct("!H")


class Verdict(enum.Enum):
    NEED_MORE = "need more"


NEED_MORE = Verdict.NEED_MORE


@dataclass(frozen=True)
class SniffResult:
    protocol: str
    domain: str  # "" when the protocol carries none (bittorrent, an empty SNI)


SniffOutcome = Union[SniffResult, Verdict, None]


# ---------------------------------------------------------------- HTTP


def sniff_http(data: bytes) -> SniffOutcome:
    """``http1`` and the Host header's host, lower-cased, port stripped."""
    if not _starts_with_method(data):
        return NEED_MORE if _could_become_method(data) else None
    lines = data.split(b"\n")
    found = ""
    # Only lines that already end in "\n" count: 4.34 would take a half-received Host value.
    # Every Host line counts, the last one winning, as 4.34's loop over the lines has it.
    for line in lines[1:-1]:
        if line in (b"", b"\r"):
            break  # the headers ended (4.34 scans on into the body)
        key, sep, value = line.partition(b":")
        if sep and key.lower() == HTTP_HOST_HEADER:
            host = _host_without_port(go_lower(value.strip()))
            if host is None:
                return None
            found = host or found
    else:
        return SniffResult(PROTOCOL_HTTP1, found) if found else NEED_MORE
    return SniffResult(PROTOCOL_HTTP1, found) if found else None


def _starts_with_method(data: bytes) -> bool:
    head = data[:_LONGEST_METHOD].lower()
    return any(head.startswith(method) for method in HTTP_METHODS)


def _could_become_method(data: bytes) -> bool:
    head = data.lower()
    return len(head) < _LONGEST_METHOD and any(m.startswith(head) for m in HTTP_METHODS)


def go_lower(raw: bytes) -> str:
    """Go's ``strings.ToLower`` of the bytes: Unicode's simple lower case (the Kelvin sign
    is "k"), an invalid UTF-8 byte as U+FFFD."""
    if raw.isascii():
        return raw.decode("ascii").lower()
    return "".join(_SIMPLE_LOWER.get(c) or c.lower() for c in raw.decode("utf-8", "replace"))


# Where Python's lower() is not one character (its full mapping): Go's simple one.
_SIMPLE_LOWER = {"\u0130": "i"}


def _host_without_port(text: str) -> Optional[str]:
    """Go ``net.SplitHostPort`` as ``http.ParseHost`` uses it: "" for an empty host, None
    for something that is not ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1:] if close >= 0 else None
        if rest is None or not (rest == "" or (rest.startswith(":") and _is_port(rest[1:]))):
            return None
        host = text[1:close]
    elif text.count(":") > 1:
        return None  # "too many colons": a bare IPv6 address needs brackets
    else:
        host, _, port = text.partition(":")
        if port and not _is_port(port):
            return None
    return go_address(host).value


def _is_port(text: str) -> bool:
    """``ParseHost``'s port: ``strconv.ParseUint(port, 0, 16)`` (``0x50`` is 80)."""
    return text == "" or go_parse_port(text) is not None


# ---------------------------------------------------------------- TLS


def sniff_tls(data: bytes) -> SniffOutcome:
    """``tls`` and the ClientHello's server name, from the first record."""
    if len(data) < TLS_RECORD_HEADER:
        return NEED_MORE if _could_be_tls(data) else None
    if data[0] != TLS_CONTENT_HANDSHAKE or data[1] != TLS_MAJOR_VERSION:
        return None
    record_length = _U16.unpack_from(data, 3)[0]
    if len(data) < TLS_RECORD_HEADER + record_length:
        return NEED_MORE
    record = Cursor(data, TLS_RECORD_HEADER, TLS_RECORD_HEADER + record_length)
    try:
        name = _client_hello_server_name(record)
    except (NeedMore, _NotClientHello):
        # The record is complete, so running off its end is a malformed hello, not "wait".
        return None
    return None if name is None else SniffResult(PROTOCOL_TLS, name)


class _NotClientHello(Exception):
    """Internal: the record is not a well-formed ClientHello (tls/sniff.go errNotClientHello)."""


def _could_be_tls(data: bytes) -> bool:
    return (len(data) < 1 or data[0] == TLS_CONTENT_HANDSHAKE) and \
        (len(data) < 2 or data[1] == TLS_MAJOR_VERSION)


def _client_hello_server_name(cur: Cursor) -> Optional[str]:
    """The SNI host name ("" if the client sent an empty one, which 4.34 still counts as
    TLS), or None if the hello has none."""
    # 4.34 skips the handshake type; we check it, as only a ClientHello has an SNI.
    if cur.u8() != TLS_HANDSHAKE_CLIENT_HELLO:
        raise _NotClientHello
    cur.take(3 + 2 + TLS_RANDOM_LENGTH)  # handshake length, client version, random
    session_id_length = cur.u8()
    if session_id_length > TLS_MAX_SESSION_ID:
        raise _NotClientHello
    cur.take(session_id_length)
    cipher_suites_length = cur.u16()
    if cipher_suites_length % 2:  # suites are uint16s
        raise _NotClientHello
    cur.take(cipher_suites_length)
    cur.take(cur.u8())  # compression methods
    if cur.u16() != cur.remaining:  # tls/sniff.go: extensions fill the rest exactly
        raise _NotClientHello
    while cur.remaining:  # bounded: each turn consumes at least 4 bytes
        extension, length = cur.u16(), cur.u16()
        body = Cursor(cast(bytes, cur.buf), cur.pos, cur.pos + length)  # a view, not a copy
        cur.take(length)
        if extension == TLS_EXTENSION_SERVER_NAME:
            found = _server_name(body)
            if found is not None:
                return found
    return None


def _server_name(cur: Cursor) -> Optional[str]:
    """The server_name extension's host_name entry, or None if it has none."""
    if cur.u16() != cur.remaining:
        raise _NotClientHello
    while cur.remaining:  # bounded: each turn consumes at least 3 bytes
        name_type, name = cur.u8(), cur.take(cur.u16())
        if name_type == SNI_HOST_NAME:
            # RFC 6066 §3: no trailing dot (tls/sniff.go refuses one too). Other bytes go
            # as they are, as Go's string of them (surrogateescape keeps a bad one apart).
            if name.endswith(b"."):
                raise _NotClientHello
            return name.decode("utf-8", "surrogateescape")
    return None


# ---------------------------------------------------------------- BitTorrent


def sniff_bittorrent(data: bytes) -> SniffOutcome:
    """The peer-wire handshake's fixed 20-byte opening; there is no domain."""
    if len(data) < len(BITTORRENT_HANDSHAKE):
        return NEED_MORE if BITTORRENT_HANDSHAKE.startswith(data) else None
    if data.startswith(BITTORRENT_HANDSHAKE):
        return SniffResult(PROTOCOL_BITTORRENT, "")
    return None


# ---------------------------------------------------------------- all together

SNIFFERS: Sequence[Callable[[bytes], SniffOutcome]] = (sniff_http, sniff_tls, sniff_bittorrent)


def sniff(data: bytes) -> SniffOutcome:
    """The first sniffer's result, in 4.34's order; ``NEED_MORE`` while any could still
    match; ``None`` ("unknown content") when none can."""
    waiting = False
    for sniffer in SNIFFERS:
        outcome = sniffer(data)
        if isinstance(outcome, SniffResult):
            return outcome
        waiting = waiting or outcome is NEED_MORE
    return NEED_MORE if waiting else None


def should_override(protocol: str, dest_override: Sequence[str]) -> bool:
    """default.go ``shouldOverride``: the protocol starts with a ``destOverride`` entry, so
    "http" covers "http1". The config layer has already turned "https"/"ssl" into "tls"."""
    return any(protocol.startswith(name) for name in dest_override)


def override_domain(result: SniffResult, dest_override: Sequence[str]) -> Optional[str]:
    """The domain that replaces the target address, if any (4.34 needs a non-empty one)."""
    if result.domain and should_override(result.protocol, dest_override):
        return result.domain
    return None
