"""RFC 6455 §4 opening handshake, pure and socket-free, as v2ray 4.34 does it (Debian's build,
with its Go net/http and gorilla).

Client (``dialer.go``): ``GET <path>`` with Host, Upgrade, Connection, Sec-WebSocket-Key and
Sec-WebSocket-Version, then the configured ``headers``; a configured Host replaces the host.
Server: net/http reads the head (431 over MAX_REQUEST_HEAD, 400 without one Host on
HTTP/1.1); ``hub.go`` wants the URL path (query stripped, %-escapes decoded) to equal the
configured path exactly, else 404; then gorilla's upgrade checks, else 400 or 405. A refused
request leaves the connection open for the next one, as net/http does. Parsers follow the
``v2sync.common.cursor`` contract.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import List, Mapping, Optional, Tuple
from urllib.parse import quote, unquote_to_bytes

from v2sync.common.errors import LocalProtocolError, RemoteProtocolError
from v2sync.transport.internet.headers.http import http_date, mime_fields, request_fields

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A server's answer to our upgrade (and what a server's reader buffers, though a request
# head is refused past MAX_REQUEST_HEAD): gorilla sets no limit; an 8 KiB one refused a
# long answer 4.34 takes (found by a review).
MAX_HANDSHAKE = 64 * 1024
# A request head: hub.go's MaxHeaderBytes (2048) and the 4096 bytes net/http reads beyond.
MAX_REQUEST_HEAD = 2048 + 4096
VERSION = "13"
# A request head ends at its first empty line; Go's textproto ends a line at LF, dropping a
# CR before it.
_BLANK_LINE = re.compile(rb"\n\r?\n")
# httpguts: validHostByte, and the control bytes ValidHeaderFieldValue refuses (tab passes).
_HOST_BYTES = re.compile(rb"[0-9A-Za-z!$%&'()*+,\-.:;=\[\]_~]*")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HTTP_VERSIONS = ("HTTP/1.0", "HTTP/1.1")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?]*")
_STATUS = re.compile(r"HTTP/1\.[01] ([0-9]{3})(?: |\Z)")
# Go's url package leaves these unescaped in a path; '%' is kept so written escapes survive.
_PATH_SAFE = "/%:@&=+$,;!'()*~[]"
# gorilla refuses these in the configured headers: the handshake sets them itself.
_OWN_HEADERS = frozenset({"upgrade", "connection", "sec-websocket-key",
                          "sec-websocket-version", "sec-websocket-extensions"})
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})

Headers = Tuple[Tuple[str, str], ...]


# Go net/http's own answer when a request head does not parse, or stops coming before the
# header timeout with bytes already read (server.go, "400 Bad Request"): it never reaches
# gorilla, whose upgrade checks answer response_400() above. Seen from the real 4.34 in
# tests/scenarios/test_transport_bad_input.py.
NET_HTTP_400 = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Connection: close\r\n\r\n400 Bad Request")


def _net_http_error(status: str) -> bytes:
    """net/http's answer to a request it refuses before any handler (server.go)."""
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Connection: close\r\n\r\n{status}").encode("ascii")


NET_HTTP_431 = _net_http_error("431 Request Header Fields Too Large")
# An HTTP major version other than 1: net/http's statusError puts its reason in the status
# line too.
NET_HTTP_505 = _net_http_error("505 HTTP Version Not Supported: unsupported protocol version")
NET_HTTP_NO_HOST = _net_http_error("400 Bad Request: missing required Host header")
NET_HTTP_BAD_HOST = _net_http_error("400 Bad Request: malformed Host header")
NET_HTTP_BAD_NAME = _net_http_error("400 Bad Request: invalid header name")
NET_HTTP_BAD_VALUE = _net_http_error("400 Bad Request: invalid header value")


def go_date() -> str:
    """net/http's Date: now, in UTC."""
    return http_date(datetime.now(timezone.utc))


def response_404(date: str, closing: str = "", version: str = "HTTP/1.1") -> bytes:
    """hub.go's answer to a wrong path: a bare 404 from net/http (which answers an HTTP/1.0
    request in HTTP/1.0)."""
    return (f"{_reply_version(version)} 404 Not Found\r\nDate: {date}\r\nContent-Length: 0\r\n{closing}"
            "\r\n").encode("ascii")


def response_options(date: str, closing: str = "", version: str = "HTTP/1.1") -> bytes:
    """net/http's own answer to ``OPTIONS *``, before any handler: 200, no body."""
    return (f"{_reply_version(version)} 200 OK\r\nContent-Length: 0\r\nDate: {date}\r\n"
            f"{closing}\r\n").encode("ascii")


def _reply_version(version: str) -> str:
    """net/http answers an HTTP/1.0 request in HTTP/1.0, any other in HTTP/1.1."""
    return "HTTP/1.0" if version == "HTTP/1.0" else "HTTP/1.1"


def gorilla_error(status: int, date: str, closing: str = "", head_only: bool = False,
                  version: str = "HTTP/1.1") -> bytes:
    """gorilla's ``returnError``: ``http.Error`` with its status text, and the version it
    speaks (§4.4). net/http sorts the handler's headers, then adds Date and the length."""
    text = HTTP_STATUS_TEXT[status]
    body = text + "\n"
    return (f"{_reply_version(version)} {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Sec-Websocket-Version: 13\r\nX-Content-Type-Options: nosniff\r\n"
            f"Date: {date}\r\nContent-Length: {len(body)}\r\n{closing}\r\n"
            f"{'' if head_only else body}").encode("ascii")


HTTP_STATUS_TEXT = {400: "Bad Request", 405: "Method Not Allowed"}


def accept_token(key: str) -> str:
    """Sec-WebSocket-Accept for ``key``: base64(SHA-1(key + GUID)) (§4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + GUID).digest()).decode("ascii")


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def normalize_path(path: str) -> str:
    """v2ray ``Config.GetNormalizedPath``: empty means "/", and a leading "/" is added."""
    return path if path.startswith("/") else "/" + path


def _tokens(headers: Headers, name: str) -> frozenset:
    return frozenset(t.strip(" \t").lower() for k, v in headers if k == name for t in v.split(","))


def _first(headers: Headers, name: str) -> Optional[str]:
    return next((v for k, v in headers if k == name), None)


@dataclass(frozen=True)
class WsRequest:
    method: str
    path: str  # URL path only: query stripped, %-escapes decoded (Go ``URL.Path``)
    headers: Headers  # (lower-cased name, value), in wire order
    version: str = "HTTP/1.1"

    def header(self, name: str) -> Optional[str]:
        """The first value of ``name`` (case-insensitive), like Go ``Header.Get``."""
        return _first(self.headers, name.lower())


# What Go's http.Client says it is when the config does not say otherwise.
GO_USER_AGENT = "Go-http-client/1.1"


def canonical_header(name: str) -> str:
    """Go's ``CanonicalMIMEHeaderKey``: each hyphen-separated word capitalized; a name
    with a character outside a token is left as it is."""
    if not _TOKEN.match(name) or not name.isascii():
        return name
    return "-".join(word[:1].upper() + word[1:].lower() for word in name.split("-"))


def build_request(host: str, path: str, key: str,
                  headers: Mapping[str, str] = _NO_HEADERS) -> bytes:
    """The client's upgrade request as 4.34's sends it: Go's ``Request.Write`` puts Host
    and User-Agent first, then every other header sorted by its canonical name (gorilla's
    own among them). ``host`` is what gorilla puts in Host: "addr:port", the port left
    out when it is the scheme's default (80 for ws, 443 for wss)."""
    host_header, user_agent = None, GO_USER_AGENT
    fields = [("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
              ("Sec-WebSocket-Version", VERSION), ("Upgrade", "websocket")]
    for name, value in headers.items():
        if not _TOKEN.match(name) or _BAD_VALUE.search(value):
            raise LocalProtocolError(f"invalid websocket header {name!r}")
        if name.lower() in _OWN_HEADERS:
            raise LocalProtocolError(f"websocket header {name} is set by the handshake itself")
        canonical = canonical_header(name)
        if canonical == "Host":
            host_header = value if host_header is None else host_header
        elif canonical == "User-Agent":
            user_agent = value
        else:
            fields.append((canonical, value))
    fields.sort(key=lambda field: field[0])  # stable: a name's values keep their order
    target, sep, query = request_path(path).partition("?")
    lines = [f"GET {quote(target, safe=_PATH_SAFE)}{sep}{query} HTTP/1.1\r\n",
             f"Host: {host if host_header is None else host_header}\r\n",
             f"User-Agent: {user_agent}\r\n" if user_agent else "",
             *(f"{name}: {value}\r\n" for name, value in fields), "\r\n"]
    return "".join(lines).encode("utf-8")  # Go writes the strings' UTF-8 bytes


def request_path(path: str) -> str:
    """The path as gorilla's Dialer sends it once Go parsed "ws://host" + path as a URL: a
    fragment dropped (wherever it starts), a broken %-escape refused ("invalid URL escape")."""
    path = normalize_path(path).partition("#")[0]
    if _BAD_ESCAPE.search(path.partition("?")[0]):
        raise LocalProtocolError(f"websocket path {path!r}: invalid URL escape")
    return path


def _url_path(target: str, reply: bytes) -> str:
    """Go ``URL.Path`` of a request-target: absolute form reduced, query cut, escapes decoded."""
    path = _ABSOLUTE.sub("", target, count=1).partition("?")[0]
    if not path.startswith("/") or _BAD_ESCAPE.search(path):
        raise RemoteProtocolError(f"invalid websocket request target {target[:64]!r}", reply=reply)
    return unquote_to_bytes(path.encode("latin-1")).decode("utf-8", "surrogateescape")


def target_url_path(target: str) -> Optional[str]:
    """Go ``URL.Path`` of a request-target, None where Go cannot parse it."""
    try:
        return _url_path(target, b"")
    except RemoteProtocolError:
        return None


def parse_request(buf: bytes) -> Optional[Tuple[WsRequest, int]]:
    """The upgrade request, read as Go's net/http reads it before gorilla sees it: a head
    over MAX_REQUEST_HEAD is a 431; lines end at LF (a CR before it dropped), headers as
    textproto reads them (``headers.http.request_fields``); then the server's checks."""
    reply = NET_HTTP_400
    found = _head_lines(buf, MAX_REQUEST_HEAD, NET_HTTP_431)
    if found is None:
        return None
    lines, consumed = found
    first = lines[0].decode("latin-1")
    parts = first.split(" ")
    version = _go_version(parts[2]) if len(parts) == 3 else None
    if version is None or not _TOKEN.match(parts[0]):
        raise RemoteProtocolError(f"invalid HTTP request line {first[:64]!r}", reply=reply)
    method, target = parts[0], parts[1]
    path = _target_path(method, target, reply)  # parsed before Go looks at anything else
    try:
        fields = request_fields(lines[1:], version)
    except ValueError as e:
        raise RemoteProtocolError(f"websocket request: {e}", reply=reply) from None
    h2_preface = method == "PRI" and target == "*" and version == (2, 0)
    if version[0] != 1 and not h2_preface:  # http1ServerSupportsRequest
        raise RemoteProtocolError(f"HTTP version {parts[2]!r}", reply=NET_HTTP_505)
    hosts = [value for name, value in fields if name.lower() == b"host"]
    if not hosts and version >= (1, 1) and method != "CONNECT" and not h2_preface:
        raise RemoteProtocolError("HTTP/1.1 request without Host", reply=NET_HTTP_NO_HOST)
    _check_fields(fields, hosts)
    headers = tuple((name.decode("latin-1").lower(), value.decode("latin-1"))
                    for name, value in fields)
    return WsRequest(method, path, headers, parts[2]), consumed


def _head_lines(buf: bytes, limit: int, too_large: Optional[bytes] = None
                ) -> Optional[Tuple[List[bytes], int]]:
    """A head's lines (its blank line left out) and the bytes it took, or None while it is
    incomplete; one over ``limit`` is refused (with ``too_large``, a server's answer)."""
    data = bytes(buf[:limit])
    end = _BLANK_LINE.search(data)
    if end is None:
        if len(buf) >= limit:
            raise RemoteProtocolError(f"websocket handshake head over {limit} bytes",
                                      reply=too_large)
        return None
    lines = data[:end.start()].split(b"\n")
    return [line[:-1] if line.endswith(b"\r") else line for line in lines], end.end()


def _check_fields(fields: List[Tuple[bytes, bytes]], hosts: List[bytes]) -> None:
    """net/http's server checks (server.go readRequest), each its own 400."""
    if len(hosts) == 1 and not _HOST_BYTES.fullmatch(hosts[0]):  # httpguts.ValidHostHeader
        raise RemoteProtocolError("malformed Host header", reply=NET_HTTP_BAD_HOST)
    for name, value in fields:
        if not _TOKEN.match(name.decode("latin-1")):
            raise RemoteProtocolError(f"invalid header name {name[:64]!r}",
                                      reply=NET_HTTP_BAD_NAME)
        if _CONTROL.search(value):  # httpguts.ValidHeaderFieldValue
            raise RemoteProtocolError(f"invalid header value {value[:64]!r}",
                                      reply=NET_HTTP_BAD_VALUE)


def _go_version(text: str) -> Optional[Tuple[int, int]]:
    """Go 1.19's ``ParseHTTPVersion``: HTTP/1.0, HTTP/1.1, or "HTTP/" digit "." digit."""
    if text in _HTTP_VERSIONS:
        return 1, int(text[-1])
    if len(text) != 8 or not text.startswith("HTTP/") or text[6] != "." \
            or not (text[5] + text[7]).isdigit() or not text.isascii():
        return None
    return int(text[5]), int(text[7])


def _target_path(method: str, target: str, reply: bytes) -> str:
    """Go ``URL.Path`` of the request-target: ``*`` as it is, none for a CONNECT's
    authority (net/http reads ``host:port`` so), else the path of a path or a URL."""
    if target == "*":
        return target
    if method == "CONNECT" and not target.startswith("/"):
        return ""
    return _url_path(target, reply)


@dataclass(frozen=True)
class UpgradeAnswer:
    """What the server sends for one request: the 101 (``upgraded``), or an error reply
    after which the connection waits for the next request (``keep_alive``) or closes."""

    reply: bytes
    upgraded: bool = False
    keep_alive: bool = False


def answer_upgrade(request: WsRequest, expected_path: str, date: str = "") -> UpgradeAnswer:
    """The answer to ``request``, as 4.34 gives it: ``hub.go`` checks the path first (404),
    then gorilla its headers, in its order (400; 405 for a method other than GET). Refused,
    the connection stays for the next request as net/http keeps it (``keeps_alive``).
    gorilla takes any non-empty key, as 4.34's does: a prober sees no difference."""
    date = date or go_date()
    keep_alive = keeps_alive(request)
    closing = _closing_header(request, keep_alive)
    if request.method == "OPTIONS" and request.path == "*":  # net/http's globalOptionsHandler
        return UpgradeAnswer(response_options(date, closing, request.version), keep_alive=keep_alive)
    if request.path != normalize_path(expected_path):
        return UpgradeAnswer(response_404(date, closing, request.version), keep_alive=keep_alive)
    status = _refusal(request)
    if status:
        reply = gorilla_error(status, date, closing, request.method == "HEAD", request.version)
        return UpgradeAnswer(reply, keep_alive=keep_alive)
    key = request.header("sec-websocket-key") or ""
    return UpgradeAnswer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                         + accept_token(key).encode("ascii") + b"\r\n\r\n", upgraded=True)


def _refusal(request: WsRequest) -> int:
    """gorilla's status for a request it does not upgrade, else 0."""
    headers = request.headers
    if "upgrade" not in _tokens(headers, "connection"):
        return 400
    if "websocket" not in _tokens(headers, "upgrade"):
        return 400
    if request.method != "GET":
        return 405
    if VERSION not in _tokens(headers, "sec-websocket-version"):
        return 400
    return 0 if request.header("sec-websocket-key") else 400


def keeps_alive(request: WsRequest) -> bool:
    """net/http keeps a connection for another request after answering one: HTTP/1.1
    unless it says ``Connection: close``, HTTP/1.0 only if it says ``keep-alive``. v2sync
    also closes after a request with a body, which net/http would read and drop first."""
    connection = _tokens(request.headers, "connection")
    if request.header("content-length") not in (None, "0") or request.header("transfer-encoding"):
        return False
    if request.method == "PRI":  # an HTTP/2 preface: answered, then closed (isH2Upgrade)
        return False
    if request.version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


def _closing_header(request: WsRequest, keep_alive: bool) -> str:
    """The Connection line net/http adds to an error reply."""
    if request.version == "HTTP/1.0":
        return "Connection: keep-alive\r\n" if keep_alive else ""
    return "" if keep_alive else "Connection: close\r\n"


def parse_response(buf: bytes, key: str) -> Optional[Tuple[int, int]]:
    """``(101, consumed)`` for a valid answer to our ``key``; anything else raises. Read as
    gorilla reads it (Go's ReadResponse, then its checks): lines end at LF, headers as
    textproto reads them, Upgrade and Connection token lists, and no compression that was
    not offered (found by a review: v2sync wanted ``Upgrade: websocket`` exactly, refused
    a folded line, and took a ``permessage-deflate`` answer)."""
    found = _head_lines(buf, MAX_HANDSHAKE)
    if found is None:
        return None
    lines, consumed = found
    first = lines[0].decode("latin-1")
    status = _STATUS.match(first)
    if status is None:
        raise RemoteProtocolError(f"websocket handshake: invalid status line {first[:64]!r}")
    if status.group(1) != "101":
        raise RemoteProtocolError(f"websocket handshake failed: {first[:80]}")
    try:
        headers = tuple((name.decode("latin-1").lower(), value.decode("latin-1"))
                        for name, value in mime_fields(lines[1:]))
    except ValueError as e:
        raise RemoteProtocolError(f"websocket handshake: {e}") from None
    if ("websocket" not in _tokens(headers, "upgrade")
            or "upgrade" not in _tokens(headers, "connection")
            or _first(headers, "sec-websocket-accept") != accept_token(key)):
        raise RemoteProtocolError("websocket handshake failed: 101 without a valid upgrade")
    if "permessage-deflate" in _extension_names(headers):  # gorilla: errInvalidCompression
        raise RemoteProtocolError("websocket handshake: compression that was not offered")
    return 101, consumed


def _extension_names(headers: Headers) -> frozenset:
    return frozenset(ext.split(";")[0].strip(" \t").lower()
                     for k, v in headers if k == "sec-websocket-extensions" for ext in v.split(","))
