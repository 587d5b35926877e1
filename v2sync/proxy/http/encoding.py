"""HTTP/1.x proxy codec, pure and socket-free (v2ray ``proxy/http/server.go``,
``common/protocol/http/headers.go``).

Heads: ``parse_request_head`` / ``parse_response_head`` follow the ``v2sync.common.cursor``
contract (``None`` = need more, ``RemoteProtocolError`` = garbage, else ``(head, consumed)``).
A head and its terminator must fit in ``MAX_HEAD`` bytes. Bytes are decoded as Latin-1 so any
header round-trips unchanged. A request head that does not parse carries no reply: 4.34
closes without a word when Go's ``http.ReadRequest`` fails (compared live in
tests/scenarios/test_inbound_replies_differential.py). Errors in a parsed request's target
or framing carry no reply either: 4.34 closes without one where Go's ``ReadRequest`` or its
``ParseHost`` fails.

Bodies are passed through byte for byte: ``BodyFramer`` only finds where a body ends (RFC 7230
§3.3.3) so a keep-alive connection can carry the next message. Because the bytes are not
re-framed, ``Transfer-Encoding`` and ``Content-Length`` are never stripped as hop-by-hop,
unlike Go's ``httputil`` which re-chunks what it forwards.

Headers are read as Go 1.19's ``textproto`` (which 4.34 is built with) reads them, and sent
on in the order they came (Go's ``Header.Write`` sorts them by name: the same fields, in
another order): CRLF or a bare LF ends a line; an obs-fold
continuation line joins the header above it with one space; a header whose name is not a
token is dropped (Go keeps it unread and never writes it); control bytes in a value pass,
a bare CR as a space. A header line without a colon, or a continuation before any header,
is refused. Compared live in tests/scenarios/test_inbound_replies_differential.py.
"""
from __future__ import annotations

import base64
import binascii
import enum
import re
import urllib.parse
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Tuple

from v2sync.common.errors import LocalProtocolError, RemoteProtocolError
from v2sync.common.net import Address, Destination, go_parse_port

# Go's ReadRequest sets no bound; 64 KiB takes big cookie headers and keeps the rescans of a
# head that trickles in (each fill searches it again) cheap.
MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4 * 1024  # Go ``net/http/internal`` maxLineLength
MAX_TRAILERS = MAX_HEAD
HTTP_10 = "HTTP/1.0"
HTTP_11 = "HTTP/1.1"
VERSIONS = (HTTP_10, HTTP_11)
# Go's ParseHTTPVersion (Go 1.19, which 4.34 is built with) takes any one-digit HTTP/d.d, in a
# request line and in a status line; a request then goes upstream as HTTP/1.1, the only
# version Request.Write writes, and a response goes back with the version it came with.
_HTTP_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]\Z")
DEFAULT_PORTS = {"http": 80, "https": 443}  # v2ray: 443 for https, else 80

Headers = Tuple[Tuple[str, str], ...]

# RFC 7230 §3.2.6 token. Control bytes (other than HTAB) are refused in start lines and
# chunk extensions; header values take them, as Go 1.19 does, all but line ends.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LINE_END = re.compile(r"[\r\n]")
_TARGET = re.compile(r"[\x21-\x7e\x80-\xff]+\Z")
_STATUS_CODE = re.compile(r"[0-9]{3}\Z")
_HEAD_END = re.compile(rb"\n\r?\n")
# RFC 7230 §3.5 asks a server to skip "at least one" empty line before a request line (a
# client's stray CRLF after a body). A few are skipped; more leave an empty request line,
# refused as 4.34 refuses any (Go's ReadRequest). Unbounded, a client trickling newlines
# made every read rescan them all: ~2 ms a read at 64 KiB, in the selector thread that
# runs every inbound's handshakes.
MAX_LEADING_BLANK_LINES = 4
_LEADING_BLANK_LINES = re.compile(rb"(?:\r?\n){0,%d}" % MAX_LEADING_BLANK_LINES)
_GO_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")  # url.getScheme's, with its colon
# The bytes Go's url.parseHost takes in a registered name, where 4.34 then dials a name
# (``%`` only escapes bytes from 0x80 there, which no name this side resolves: refused).
_REG_NAME = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=<>\"]+\Z")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}\Z")
MAX_CONTENT_LENGTH = 2**63 - 1  # Go's ParseUint(cl, 10, 63): a stream "without end" sends it
_OWS = " \t"

# Hop-by-hop headers as v2ray's ``RemoveHopByHopHeaders`` drops them (its misspelt
# "Trailers" among them: a Trailer header and a Keep-Alive that Connection does not name go
# on, as from 4.34). Transfer-Encoding stays: we forward bodies unchanged.
HOP_BY_HOP = frozenset({"connection", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailers", "upgrade"})
_FRAMING_HEADERS = frozenset({"transfer-encoding", "content-length"})

CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


# Canned replies, byte for byte what v2ray 4.34 (Go 1.19 ``Response.Write``) sends.
def response_400() -> bytes:
    return (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
            b"Proxy-Connection: close\r\nContent-Length: 0\r\n\r\n")


def response_407() -> bytes:
    return (b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b"Proxy-Authenticate: Basic realm=\"proxy\"\r\n\r\n")


def response_503() -> bytes:
    return (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
            b"Proxy-Connection: close\r\nContent-Length: 0\r\n\r\n")


class _HeaderAccess:
    headers: Headers

    def header(self, name: str) -> Optional[str]:
        """The first value of ``name`` (case-insensitive), like Go ``Header.Get``."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> Tuple[str, ...]:
        wanted = name.lower()
        return tuple(v for k, v in self.headers if k.lower() == wanted)

    def header_tokens(self, name: str) -> Tuple[str, ...]:
        """Comma-separated list values across every ``name`` header, lower-cased."""
        return tuple(t.strip(_OWS).lower() for v in self.header_values(name)
                     for t in v.split(",") if t.strip(_OWS))


@dataclass(frozen=True)
class RequestHead(_HeaderAccess):
    method: str
    target: str
    version: str
    headers: Headers


def access_url(head: RequestHead) -> str:
    """The request's URL as 4.34's access line prints it (Go's ``URL.String``): a CONNECT
    target is an authority, ``//host:port``; an absolute URL has its scheme lower-cased
    and its path escaped as it goes upstream. A target that does not parse is shown as it
    came, its non-ASCII bytes escaped (an access line is text)."""
    target = head.target
    if head.method == "CONNECT" and not target.startswith("/"):
        return "//" + _escape_non_ascii(target)
    try:
        return parse_target(head).url
    except RemoteProtocolError:
        scheme, sep, rest = target.partition("://")
        shown = scheme.lower() + sep + rest if sep and "/" not in scheme else target
        return _escape_non_ascii(shown)


@dataclass(frozen=True)
class ResponseHead(_HeaderAccess):
    version: str
    status: int
    reason: str
    headers: Headers


class TargetForm(enum.Enum):
    ORIGIN = "origin"  # /path?q
    ABSOLUTE = "absolute"  # http://host[:port]/path?q
    AUTHORITY = "authority"  # host:port, CONNECT only
    ASTERISK = "asterisk"  # *


@dataclass(frozen=True)
class RequestTarget:
    """The request-target, split (RFC 7230 §5.3), as Go's ``url.ParseRequestURI`` splits
    it. ``host`` is empty for origin and asterisk form, and for an absolute URI without an
    authority (``http:///x``) or an opaque one (``mailto:x``); IPv6 hosts lose their
    brackets. ``path`` is what goes upstream in the request line (Go's ``RequestURI``), ``url``
    what an access line shows (``URL.String``)."""

    form: TargetForm
    scheme: str
    host: str
    port: Optional[int]
    path: str
    url: str = ""


# -- heads ------------------------------------------------------------------------------------

def _head_lines(buf: bytes, skip_blank: bool, check_start: Callable[[str], object]
                ) -> Optional[Tuple[List[str], int]]:
    """Lines of the head (line ends removed) and the bytes it spans, terminator included.

    ``check_start`` sees the start line as soon as it is whole, before the head ends, and
    raises for a bad one: Go's ReadRequest and ReadResponse read the first line on its own,
    so 4.34 refuses ``HELLO`` or an SMTP greeting at once, where waiting for a blank line
    that never comes held the connection until the handshake deadline (found by a review).
    """
    blank = _LEADING_BLANK_LINES.match(buf) if skip_blank else None
    start = blank.end() if blank is not None else 0
    end = _HEAD_END.search(buf, start, MAX_HEAD)
    if end is None:
        first_end = buf.find(b"\n", start, MAX_HEAD)
        if first_end >= 0:
            check_start(_start_line(bytes(buf[start:first_end])))
        if len(buf) >= MAX_HEAD:
            raise RemoteProtocolError(f"no end of HTTP head within {MAX_HEAD} bytes")
        return None
    raw_lines = bytes(buf[start:end.start()]).split(b"\n")
    lines = [_start_line(raw_lines[0])] + [
        (raw[:-1] if raw.endswith(b"\r") else raw).decode("latin-1") for raw in raw_lines[1:]]
    return lines, end.end()  # the callers parse the start line


def _start_line(raw: bytes) -> str:
    line = (raw[:-1] if raw.endswith(b"\r") else raw).decode("latin-1")
    if "\r" in line:
        raise RemoteProtocolError("bare CR in HTTP start line")
    return line


# What Go's textproto trims around a header line and its value (isASCIISpace but LF, which
# no line holds).
_TRIM = " \t\r"


def _parse_headers(lines: List[str]) -> Headers:
    """Go 1.19's ``readMIMEHeader``, kept as ``Header.Write`` sends it on (see above)."""
    if lines and lines[0][:1] in _OWS:
        raise RemoteProtocolError("HTTP header continuation line before any header")
    headers = []
    for line in _unfold(lines):
        name, sep, value = line.partition(":")
        if not sep:
            raise RemoteProtocolError(f"invalid HTTP header line {line[:64]!r}")
        if _TOKEN.match(name):
            headers.append((name, value.strip(_TRIM).replace("\r", " ")))
    return tuple(headers)


def _unfold(lines: List[str]) -> List[str]:
    """Each obs-fold continuation line joined to the line above with one space, as Go's
    ``readContinuedLineSlice``; the first line must not be one (``_parse_headers``)."""
    logical: List[str] = []
    for line in lines:
        if line[:1] in _OWS:
            logical[-1] += " " + line.strip(_TRIM)
        else:
            logical.append(line.strip(_TRIM))
    return logical


def parse_request_head(buf: bytes) -> Optional[Tuple[RequestHead, int]]:
    """Request line and headers. Blank lines before the request line are skipped
    (RFC 7230 §3.5) and counted in ``consumed``. Errors carry no reply (see above)."""
    found = _head_lines(buf, True, _request_line)
    if found is None:
        return None
    lines, consumed = found
    method, target, version = _request_line(lines[0])
    head = RequestHead(method, target, version, _parse_headers(lines[1:]))
    if len(head.header_values("Host")) > 1:
        raise RemoteProtocolError("too many Host headers")  # Go's readRequest refuses it
    return head, consumed


def _request_line(line: str) -> Tuple[str, str, str]:
    """Method, target and version of a request line, or RemoteProtocolError."""
    parts = line.split(" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _TARGET.match(parts[1]):
        raise RemoteProtocolError(f"invalid HTTP request line {line[:64]!r}")
    if not _HTTP_VERSION.match(parts[2]):
        raise RemoteProtocolError(f"unsupported HTTP version {parts[2][:16]!r}")
    return parts[0], parts[1], parts[2]


def parse_response_head(buf: bytes) -> Optional[Tuple[ResponseHead, int]]:
    """Status line (the reason may be empty, as Go accepts) and headers."""
    found = _head_lines(buf, False, _status_line)
    if found is None:
        return None
    lines, consumed = found
    version, code, reason = _status_line(lines[0])
    return ResponseHead(version, code, reason, _parse_headers(lines[1:])), consumed


def _status_line(line: str) -> Tuple[str, int, str]:
    """Version, code and reason of a status line, or RemoteProtocolError."""
    version, _, rest = line.partition(" ")
    code, _, reason = rest.lstrip(" ").partition(" ")
    if (not _HTTP_VERSION.match(version) or not _STATUS_CODE.match(code)
            or _BAD_VALUE.search(reason)):
        raise RemoteProtocolError(f"invalid HTTP status line {line[:64]!r}")
    return version, int(code), reason


def _encode_headers(headers: Headers) -> str:
    for name, value in headers:
        if not _TOKEN.match(name) or _LINE_END.search(value):
            raise LocalProtocolError(f"cannot send HTTP header {name!r}: {value[:64]!r}")
    return "".join(f"{name}: {value}\r\n" for name, value in headers)


def _encode(first_line: str, headers: Headers) -> bytes:
    if _BAD_VALUE.search(first_line):
        raise LocalProtocolError(f"control byte in HTTP start line {first_line[:64]!r}")
    return (first_line + "\r\n" + _encode_headers(headers) + "\r\n").encode("latin-1")


def encode_request_head(head: RequestHead) -> bytes:
    return _encode(f"{head.method} {head.target} {head.version}", head.headers)


def encode_response_head(head: ResponseHead) -> bytes:
    reason = f" {head.reason}" if head.reason else ""
    return _encode(f"{head.version} {head.status:03d}{reason}", head.headers)


# -- headers a proxy rewrites ------------------------------------------------------------------

def remove_hop_by_hop(headers: Headers) -> Headers:
    """Drop ``HOP_BY_HOP`` and every header named in Connection, keeping the framing headers
    even if Connection names them, since the body is forwarded unchanged."""
    named = {t.strip(_OWS).lower() for k, v in headers if k.lower() == "connection"
             for t in v.split(",")}
    drop = (HOP_BY_HOP | named) - _FRAMING_HEADERS
    return tuple((k, v) for k, v in headers if k.lower() not in drop)


def set_header(headers: Headers, name: str, value: str) -> Headers:
    """Replace every ``name`` header by one, appended last (Go ``Header.Set``)."""
    return _without(headers, name) + ((name, value),)


def forward_request_head(head: RequestHead, target: RequestTarget) -> RequestHead:
    """What v2ray sends upstream for a plain request: origin-form target, Host from an absolute
    URI, hop-by-hop headers gone and ``Connection: close`` (one upstream link per request).
    The framing headers as Go's ``ReadRequest`` leaves them (``_framing_headers``)."""
    headers = remove_hop_by_hop(head.headers)
    if target.host:
        headers = (("Host", _authority_text(target)),) + tuple(
            (k, v) for k, v in headers if k.lower() != "host")
    headers = set_header(headers, "Connection", "close")
    headers = _framing_headers(_user_agent(headers), head.version)
    if framing_for_request(head).kind is BodyKind.NONE:
        # Go's transferWriter: no length for a bodiless request, but "Content-Length: 0"
        # for the methods "many servers expect" one for.
        headers = _without(headers, "Content-Length")
        if head.method in ("POST", "PUT", "PATCH"):
            headers += (("Content-Length", "0"),)
    return replace(head, target=target.path, version=HTTP_11, headers=headers)


def forward_response_head(head: ResponseHead, keep_alive: bool) -> ResponseHead:
    """The response for the client, with v2ray's keep-alive headers or ``Connection: close``."""
    headers = _framing_headers(remove_hop_by_hop(head.headers), head.version)
    if head.status in (204, 304):  # Go's Response.Write sends no length for a bodiless status
        headers = _without(headers, "Content-Length")
    if keep_alive:
        for name, value in (("Proxy-Connection", "keep-alive"), ("Connection", "keep-alive"),
                            ("Keep-Alive", "timeout=4")):
            headers = set_header(headers, name, value)
    else:
        headers = set_header(headers, "Connection", "close")
    return replace(head, headers=headers)


def _framing_headers(headers: Headers, version: str) -> Headers:
    """The framing headers of a message whose framing was checked, as Go reads them: a
    Transfer-Encoding before HTTP/1.1 is dropped (ignored), a chunked one drops the
    Content-Length, and repeats of one Content-Length become one."""
    if _value_of(headers, "Transfer-Encoding") is not None:
        if not _at_least_http11(version):
            return _framing_headers(_without(headers, "Transfer-Encoding"), version)
        return set_header(_without(headers, "Content-Length"), "Transfer-Encoding", "chunked")
    length = _value_of(headers, "Content-Length")
    if length is None:
        return headers
    return set_header(headers, "Content-Length", length.strip(_TRIM)) if length.strip(_TRIM) else \
        _without(headers, "Content-Length")


def _user_agent(headers: Headers) -> Headers:
    """Go's Request.Write sends the first User-Agent alone, and none when it is empty."""
    agent = _value_of(headers, "User-Agent")
    if agent is None:
        return headers
    kept = _without(headers, "User-Agent")
    return kept + (("User-Agent", agent),) if agent else kept


def _value_of(headers: Headers, name: str) -> Optional[str]:
    wanted = name.lower()
    return next((v for k, v in headers if k.lower() == wanted), None)


def _without(headers: Headers, name: str) -> Headers:
    wanted = name.lower()
    return tuple((k, v) for k, v in headers if k.lower() != wanted)


def parse_basic_auth(value: Optional[str]) -> Optional[Tuple[str, str]]:
    """``Basic base64(user:pass)`` -> (user, pass), None if absent or malformed.
    The scheme is matched case-insensitively (RFC 7617); v2ray wants exactly ``Basic ``."""
    if not value:
        return None
    scheme, _, encoded = value.strip(_OWS).partition(" ")
    if scheme.lower() != "basic":
        return None
    encoded = encoded.strip(_OWS)
    if len(encoded) % 4:  # padded StdEncoding, as Go's decoder requires
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.decode("utf-8", "surrogateescape").partition(":")
    return (user, password) if sep else None


def encode_basic_auth(user: str, password: str) -> str:
    """The ``Proxy-Authorization`` value for ``user:pass`` (client.go setUpHTTPTunnel)."""
    raw = f"{user}:{password}".encode("utf-8", "surrogateescape")
    return "Basic " + base64.b64encode(raw).decode("ascii")


# What Go's net/http sends as User-Agent on a request that sets none (4.34's CONNECT).
GO_USER_AGENT = "Go-http-client/1.1"


def authority(dest: Destination) -> str:
    """``host:port`` with IPv6 in brackets (Go ``net.JoinHostPort``)."""
    host = dest.address.value
    return f"[{host}]:{dest.port}" if ":" in host else f"{host}:{dest.port}"


def connect_headers(target: str, auth: Optional[Tuple[str, str]]) -> Headers:
    headers: Headers = (("Host", target), ("User-Agent", GO_USER_AGENT))
    if auth is not None:
        headers += (("Proxy-Authorization", encode_basic_auth(*auth)),)
    return headers


def encode_connect_request(dest: Destination, auth: Optional[Tuple[str, str]] = None) -> bytes:
    """The HTTP/1.1 CONNECT an HTTP outbound sends, as Go's ``Request.Write`` lays it out."""
    target = authority(dest)
    headers = connect_headers(target, auth) + (("Proxy-Connection", "Keep-Alive"),)
    return encode_request_head(RequestHead("CONNECT", target, HTTP_11, headers))


# -- targets and destinations ------------------------------------------------------------------

def _split_authority(text: str, uri: bool = True) -> Tuple[str, Optional[int]]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; an empty port means none. In a
    URI (``uri``: a CONNECT target or an absolute URL, which Go's ``url`` package checks
    first) a port is digits only; a Host header's goes to 4.34's ``ParseHost`` alone."""
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[1:close], text[close + 1:]
        if close < 0 or (rest and not rest.startswith(":")) or not Address.parse(host).is_ip:
            raise RemoteProtocolError(f"invalid IPv6 authority {text[:64]!r}")
        port_text = rest[1:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    if not text.startswith("[") and not _REG_NAME.match(host):
        raise RemoteProtocolError(f"invalid host {_escape_non_ascii(host[:64])!r}")
    if not port_text:
        return host, None
    port = go_parse_port(port_text) if not uri or port_text.isdigit() else None
    if port is None:
        raise RemoteProtocolError(f"invalid port {_escape_non_ascii(port_text[:16])!r}")
    return host, port


def _authority_text(target: RequestTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port is None else f"{host}:{target.port}"


def parse_target(head: RequestHead) -> RequestTarget:
    """Classify the request-target; CONNECT needs ``host:port``, others origin, absolute or
    ``*`` form. Garbage raises with no reply: 4.34 closes without one (Go's ``ReadRequest``
    or its ``ParseHost`` fails)."""
    target = head.target
    if head.method == "CONNECT":
        return _authority(target)
    if head.method.upper() == "CONNECT":
        return _other_case_connect(head)
    if target == "*":
        return RequestTarget(TargetForm.ASTERISK, "", "", None, "*", "*")
    if target.startswith("/"):
        path, query = _split_query(target)
        escaped = _escape_path(path)
        return RequestTarget(TargetForm.ORIGIN, "", "", None, escaped + query, escaped + query)
    scheme = _GO_SCHEME.match(target)
    if scheme is None:
        raise RemoteProtocolError(f"invalid request target {_escape_non_ascii(target[:64])!r}")
    return _absolute(scheme.group()[:-1].lower(), target[scheme.end():])


def _absolute(scheme: str, rest: str) -> RequestTarget:
    """What follows ``scheme:``, as Go's ``url.parse`` reads it for a request: the query
    cut off first (no fragment: ``#`` stays in the path and is escaped), then an
    authority after ``//``, else an opaque URI when no ``/`` starts it."""
    rest, query = _split_query(rest)
    if not rest.startswith("/"):  # mailto:x: no host, and RequestURI is the opaque part
        return RequestTarget(TargetForm.ABSOLUTE, scheme, "", None, rest + query,
                             f"{scheme}:{rest}{query}")
    authority, path = "", rest
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        path = slash + path
    userinfo, at, hostport = authority.rpartition("@")
    host, port = _split_authority(hostport) if hostport else ("", None)
    if at and (not _USERINFO.match(userinfo) or _PCT_BROKEN.search(userinfo)):
        raise RemoteProtocolError("invalid userinfo in request target")
    escaped = _escape_path(path)
    shown = f"{scheme}://{authority}{escaped}{query}" if authority else f"{scheme}:{escaped}{query}"
    return RequestTarget(TargetForm.ABSOLUTE, scheme, host, port, (escaped or "/") + query,
                         shown)


def _split_query(text: str) -> Tuple[str, str]:
    """(path, ``?query`` or ""): the query kept as it came, a lone ``?`` too (ForceQuery)."""
    path, sep, query = text.partition("?")
    return path, sep + query


# Go's url.shouldEscape(c, encodePath) leaves letters, digits and these as they are...
_PATH_KEEPS = frozenset("-_.~$&+,/:;=@")
# ...and url.validEncoded(s, encodePath) takes a raw path of them and these as it came.
_PATH_RAW = _PATH_KEEPS | frozenset("!'()*[]%")
_PCT_BROKEN = re.compile(r"%(?![0-9A-Fa-f]{2})")  # a % that starts no escape
_USERINFO = re.compile(r"[A-Za-z0-9\-._:~!$&'()*+,;=%@]*\Z")  # url.validUserinfo


def _escape_path(path: str) -> str:
    """Go's ``EscapedPath`` of a path ``url.setPath`` read: as it came when every byte is
    one Go leaves alone, else unescaped and escaped again (non-ASCII bytes, ``"``, ``#``,
    ``{``... become ``%XX``). A ``%`` that starts no escape is refused, as Go's
    ``unescape`` refuses it (4.34 then closes without a reply)."""
    if _PCT_BROKEN.search(path):
        raise RemoteProtocolError(f"invalid URL escape in {_escape_non_ascii(path[:64])!r}")
    if all(c in _PATH_RAW or (c.isascii() and c.isalnum()) for c in path):
        return path
    raw = urllib.parse.unquote_to_bytes(path.encode("latin-1"))
    return "".join(chr(b) if chr(b) in _PATH_KEEPS or (b < 0x80 and chr(b).isalnum())
                   else f"%{b:02X}" for b in raw)


def _escape_non_ascii(text: str) -> str:
    """``text`` (a head's Latin-1 decoding of its bytes) with each byte from 0x80 as %XX."""
    return "".join(f"%{ord(c):02X}" if ord(c) >= 0x80 else c for c in text)


def _authority(text: str, uri: bool = True) -> RequestTarget:
    host, port = _split_authority(text, uri)
    # Without a port, ParseHost's default: 80 (the target has no scheme to say https).
    return RequestTarget(TargetForm.AUTHORITY, "", host,
                         DEFAULT_PORTS["http"] if port is None else port, "",
                         "//" + _escape_non_ascii(text))


def _other_case_connect(head: RequestHead) -> RequestTarget:
    """``connect``, ``Connect``...: Go's ReadRequest takes an authority only after the exact
    ``CONNECT``, so it reads this target as a request URI. ``127.0.0.1:443`` is none (4.34
    closes); ``example.com:443`` is scheme ``example.com`` and an opaque ``443``, and 4.34,
    which compares the method with EqualFold, tunnels to the Host header's authority."""
    if not _GO_SCHEME.match(head.target):
        raise RemoteProtocolError(f"invalid URI for request {_escape_non_ascii(head.target[:64])!r}")
    return _authority(head.header("Host") or "", uri=False)


def request_destination(head: RequestHead, target: RequestTarget) -> Optional[Destination]:
    """Where v2ray sends the request: the target's host, else the Host header (transparent
    mode), with port 443 for ``https`` and 80 otherwise; None when neither names a host."""
    host, port = target.host, target.port
    if not host:
        host_header = head.header("Host")
        if not host_header:
            return None
        host, port = _split_authority(host_header, uri=False)
    if port is None:
        port = DEFAULT_PORTS.get(target.scheme, DEFAULT_PORTS["http"])
    return Destination(Address.parse(host), port)


# -- connection persistence --------------------------------------------------------------------

def request_wants_keep_alive(head: RequestHead) -> bool:
    """4.34 serves another request on the connection only when this one said
    ``Proxy-Connection: keep-alive`` (http/server.go), whatever its version or ``Connection``
    header; curl and browsers send it to proxies."""
    return (head.header("Proxy-Connection") or "").strip().lower() == "keep-alive"


def response_length_known(head: ResponseHead, request_method: str = "GET") -> bool:
    """Go's ``Response.ContentLength >= 0``: the body is absent or has a Content-Length
    (``framing_for_response``, whose errors it raises).
    On that alone 4.34 answers with keep-alive headers, after dropping the origin's own
    hop-by-hop ones (its ``Connection: close`` is about the upstream connection, which is
    one per request anyway); a chunked or until-close body gets ``Connection: close``
    (http/server.go, compared live in tests/scenarios/test_inbound_replies_differential.py)."""
    return framing_for_response(head, request_method).kind in (BodyKind.NONE, BodyKind.LENGTH)


# -- body framing (RFC 7230 §3.3.3) ------------------------------------------------------------

class BodyKind(enum.Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"


@dataclass(frozen=True)
class Framing:
    kind: BodyKind
    length: int = 0  # for LENGTH only


NO_BODY = Framing(BodyKind.NONE)


def _at_least_http11(version: str) -> bool:
    """Go's ``protoAtLeast(1, 1)`` for a version ``_HTTP_VERSION`` matched."""
    return (int(version[5]), int(version[7])) >= (1, 1)


def _chunked(head: _HeaderAccess, version: str) -> bool:
    """Go 1.19's ``parseTransferEncoding``: a Transfer-Encoding before HTTP/1.1 is ignored;
    from 1.1 it must be one field, exactly ``chunked`` (any other is where request smuggling
    lives, and Go refuses it in both directions)."""
    codings = head.header_values("Transfer-Encoding")
    if not codings or not _at_least_http11(version):
        return False
    if len(codings) != 1 or codings[0].strip(_TRIM).lower() != "chunked":
        raise RemoteProtocolError(f"unsupported Transfer-Encoding {list(codings)[:4]}")
    return True


def _content_length(head: _HeaderAccess) -> Optional[str]:
    """Go 1.19's ``fixLength``, its first half: the Content-Length as one trimmed value
    (repeats must agree); None without one, or with an empty one."""
    values = {v.strip(_TRIM) for v in head.header_values("Content-Length")}
    if len(values) > 1:
        raise RemoteProtocolError(f"differing Content-Length fields {sorted(values)[:4]}")
    return values.pop() or None if values else None


def _length(value: Optional[str]) -> Optional[int]:
    """Go's ``parseContentLength``: decimal digits only (no sign, no list)."""
    if value is None:
        return None
    if not _CONTENT_LENGTH.match(value) or int(value) > MAX_CONTENT_LENGTH:
        raise RemoteProtocolError(f"invalid Content-Length {value[:32]!r}")
    return int(value)


def framing_for_request(head: RequestHead) -> Framing:
    """Chunked, Content-Length or none, as Go's ``http.ReadRequest`` (4.34's inbound reads
    with it) frames a request: ``_chunked``, which overrides a Content-Length
    (``forward_request_head`` drops it); else one Content-Length, repeated identically at
    most. What Go refuses gets no reply from 4.34: the connection just closes."""
    chunked = _chunked(head, head.version)
    length = _content_length(head)
    if chunked:
        return Framing(BodyKind.CHUNKED)
    size = _length(length)
    return NO_BODY if not size else Framing(BodyKind.LENGTH, size)


def framing_for_response(head: ResponseHead, request_method: str) -> Framing:
    """As Go's ``ReadResponse`` frames it (4.34 answers 503 where that fails): the
    Transfer-Encoding and repeated lengths are checked first, then a bodiless status or
    method needs no length at all."""
    chunked = _chunked(head, head.version)
    length = _content_length(head)
    method = request_method.upper()
    if (method == "HEAD" or head.status < 200 or head.status in (204, 304)
            or (method == "CONNECT" and 200 <= head.status < 300)):
        return NO_BODY
    if chunked:
        return Framing(BodyKind.CHUNKED)
    size = _length(length)
    if size is None:
        return Framing(BodyKind.UNTIL_CLOSE)
    return NO_BODY if size == 0 else Framing(BodyKind.LENGTH, size)


class _Chunk(enum.Enum):
    SIZE = "size"
    DATA = "data"
    DATA_CR = "data-cr"
    DATA_LF = "data-lf"
    TRAILER = "trailer"


class BodyFramer:
    """Finds the end of one body in a byte stream; never changes a byte.

    ``feed(data)`` returns ``(body, leftover)``: ``body`` is the prefix of ``data`` that
    belongs to this body (forward it), ``leftover`` starts the next message. Once ``done``,
    ``feed`` returns everything as leftover. ``feed_eof()`` ends an until-close body, and
    raises for a body cut short."""

    def __init__(self, framing: Framing):
        self.framing = framing
        self._remaining = framing.length
        self._state = _Chunk.SIZE
        self._line = b""
        self._trailer_bytes = 0
        self._done = framing.kind is BodyKind.NONE or (
            framing.kind is BodyKind.LENGTH and framing.length == 0)

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> Tuple[bytes, bytes]:
        data = bytes(data)
        if self._done:
            return b"", data
        kind = self.framing.kind
        if kind is BodyKind.UNTIL_CLOSE:
            return data, b""
        if kind is BodyKind.LENGTH:
            end = min(self._remaining, len(data))
            self._remaining -= end
        else:
            end = self._feed_chunked(data)
        self._done = self._done or (kind is BodyKind.LENGTH and self._remaining == 0)
        return data[:end], data[end:]

    def feed_eof(self) -> None:
        if self.framing.kind is BodyKind.UNTIL_CLOSE:
            self._done = True
        elif not self._done:
            raise RemoteProtocolError("connection closed in the middle of an HTTP body")

    def _feed_chunked(self, data: bytes) -> int:
        pos = 0
        while pos < len(data) and not self._done:  # every step consumes at least one byte
            if self._state is _Chunk.DATA:
                step = min(self._remaining, len(data) - pos)
                self._remaining -= step
                pos += step
                if self._remaining == 0:
                    self._state = _Chunk.DATA_CR
            elif self._state in (_Chunk.DATA_CR, _Chunk.DATA_LF):
                pos = self._chunk_end(data, pos)
            else:
                pos = self._line_step(data, pos)
        return pos

    def _chunk_end(self, data: bytes, pos: int) -> int:
        # Go's chunkedReader wants exactly CRLF after the data.
        want = b"\r" if self._state is _Chunk.DATA_CR else b"\n"
        if data[pos:pos + 1] != want:
            raise RemoteProtocolError("chunk data not followed by CRLF")
        self._state = _Chunk.DATA_LF if self._state is _Chunk.DATA_CR else _Chunk.SIZE
        return pos + 1

    def _line_step(self, data: bytes, pos: int) -> int:
        newline = data.find(b"\n", pos)
        stop = len(data) if newline < 0 else newline
        self._line += data[pos:stop]
        if len(self._line) > MAX_CHUNK_LINE:
            raise RemoteProtocolError(f"chunk line longer than {MAX_CHUNK_LINE} bytes")
        if newline < 0:
            return stop
        line, self._line = self._line, b""
        line = line[:-1] if line.endswith(b"\r") else line
        if self._state is _Chunk.SIZE:
            self._size_line(line)
        else:
            self._trailer_line(line)
        return newline + 1

    def _size_line(self, line: bytes) -> None:
        """As Go's readChunkLine and parseHexUint: trailing white space is trimmed from
        the line, then the extension cut; the size itself is hex digits only (``" 3"`` and
        ``"3 ;x"`` are refused, as 4.34 refuses them; they went on as they came)."""
        size, _, extension = line.rstrip(b" \t\r").partition(b";")
        if not _CHUNK_SIZE.match(size) or _BAD_VALUE.search(extension.decode("latin-1")):
            raise RemoteProtocolError(f"invalid chunk size line {line[:64]!r}")
        self._remaining = int(size, 16)
        self._state = _Chunk.DATA if self._remaining else _Chunk.TRAILER

    def _trailer_line(self, line: bytes) -> None:
        """Trailers are read as Go reads headers (``_parse_headers``) and passed on as
        they came."""
        if not line:
            self._done = True
            return
        if line[:1] in b" \t" and not self._trailer_bytes:
            raise RemoteProtocolError("chunked trailer continuation line before any trailer")
        self._trailer_bytes += len(line)
        if self._trailer_bytes > MAX_TRAILERS:
            raise RemoteProtocolError(f"chunked trailers longer than {MAX_TRAILERS} bytes")
        if line[:1] not in b" \t" and b":" not in line:
            raise RemoteProtocolError(f"invalid chunked trailer line {line[:64]!r}")
