"""V2Ray 4.34's TCP "http" header disguise as a pure codec (``transport/internet/headers/http``).

The client writes one fake request head before its first bytes and strips the server's response
head; the server reads the request head, checks nothing but its URL path, and writes one fake
response head before its first bytes. 4.34 parses heads with Go's ``net/http`` readRequest;
where Go versions differ this follows the Debian v2ray 4.34 binary (Go 1.19), checked over
loopback: strict ``HTTP/d.d`` versions, one Host header at most, no HEAD Content-Length rule.

Head size: Go's ``HeaderReader`` reads 2048-byte buffers and, after each read without the
blank line, parses all but the last 4 bytes as a request so far. Fed a head in one piece (how
probes arrive), that accepts a head up to ``HEAD_LIMIT`` = 10224 bytes, rejects a long head
whose 2044-byte boundaries cut a header name, and makes a 4.34 client refuse any response head
over 2048 bytes: both parsers replay those cuts.
"""
from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Tuple

from v2sync.common.errors import ConfigError, RemoteProtocolError, shown

log = logging.getLogger(__name__)

MAX_HEAD = 8192  # http.go maxHeaderLength: head bytes counted before "Header too long"
_ENDING = b"\r\n\r\n"
_STEP = 2048 - len(_ENDING)  # buf.Size read, minus the 4 bytes kept to find a split ENDING
HEAD_LIMIT = -(-MAX_HEAD // _STEP) * _STEP + len(_ENDING)  # 10224: see the module docstring

Headers = Tuple[Tuple[str, Tuple[str, ...]], ...]
# infra/conf/transport_authenticators.go; replaced as a whole when the user gives any header
DEFAULT_REQUEST_HEADERS: Headers = (
    ("Host", ("www.baidu.com", "www.bing.com")),
    ("User-Agent", ("Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like "
                    "Gecko) Chrome/53.0.2785.143 Safari/537.36",
                    "Mozilla/5.0 (iPhone; CPU iPhone OS 10_0_2 like Mac OS X) AppleWebKit/601.1"
                    " (KHTML, like Gecko) CriOS/53.0.2785.109 Mobile/14A456 Safari/601.1.46")),
    ("Accept-Encoding", ("gzip, deflate",)),
    ("Connection", ("keep-alive",)),
    ("Pragma", ("no-cache",)),
)
DEFAULT_RESPONSE_HEADERS: Headers = (
    ("Content-Type", ("application/octet-stream", "video/mpeg")),
    ("Transfer-Encoding", ("chunked",)),
    ("Connection", ("keep-alive",)),
    ("Pragma", ("no-cache",)),
    ("Cache-Control", ("private", "no-cache")),
)

# resp.go, as http.go writes them but without the Date line it appends: send dated(reply).
_ERROR_TAIL = b"Connection: close\r\nCache-Control: private\r\nContent-Length: 0\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n" + _ERROR_TAIL  # unparseable or too long
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\n" + _ERROR_TAIL  # a path not in request.path

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")  # Go 1.19 ParseHTTPVersion
_SPACE = b" \t\r\n"  # textproto.TrimString
_CTL = re.compile(rb"[\x00-\x1f\x7f]")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*:")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_HOST_CHARS = rb"A-Za-z0-9!$&'()*+,;=:\[\]<>\"_.~\-"  # url.shouldEscape(c, encodeHost) is false
_HOST_SAFE = re.compile(rb"[%s]" % _HOST_CHARS)
_HOST = re.compile(rb"(?:[%s\x80-\xff]|%%(?:25|[89A-Fa-f][0-9A-Fa-f]))*" % _HOST_CHARS)
_ZONE = re.compile(rb"(?:[%s\x80-\xff]|%%[0-9A-Fa-f]{2})*" % _HOST_CHARS)
_USERINFO = re.compile(rb"[A-Za-z0-9\-._:~!$&'()*+,;=%@]*")  # url.validUserinfo
_PORT = re.compile(rb"(?::[0-9]*)?")
_DIGITS = re.compile(rb"[0-9]+")
_BAD_TRAILERS = (b"transfer-encoding", b"trailer", b"content-length")
_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class HttpHeaderConfig:
    request_version: str = "1.1"
    request_method: str = "GET"
    request_paths: Tuple[str, ...] = ("/",)
    request_headers: Headers = DEFAULT_REQUEST_HEADERS
    response_version: str = "1.1"
    response_status: str = "200"
    response_reason: str = "OK"
    response_headers: Headers = DEFAULT_RESPONSE_HEADERS


class _Malformed(ValueError):
    """Go's readRequest would fail here; the public parsers turn it into the peer's error."""


# -- config (infra/conf/transport_authenticators.go) ------------------------------------------

def build_header_config(header: Mapping[str, Any]) -> HttpHeaderConfig:
    """``tcpSettings.header`` JSON -> config; an empty or missing value takes 4.34's default."""
    kind = header.get("type")  # loader.go looks "type" up exactly, then lower-cases it
    if not isinstance(kind, str) or kind.lower() != "http":
        raise ConfigError(f"header type {shown(kind)} is not the http header", "type", expected='"http"')
    req, resp = _section(header, "request"), _section(header, "response")
    paths = _string_list(_field(req, "path"), "request.path") or ("/",)
    for path in paths:
        _warn_if_unreachable(path)
    return HttpHeaderConfig(
        _text(req, "version", "request") or "1.1", _text(req, "method", "request") or "GET",
        paths, _headers(req, "request") or DEFAULT_REQUEST_HEADERS,
        _text(resp, "version", "response") or "1.1", _text(resp, "status", "response") or "200",
        _text(resp, "reason", "response") or "OK",
        _headers(resp, "response") or DEFAULT_RESPONSE_HEADERS)


def _field(obj: Mapping[str, Any], name: str) -> Any:
    # encoding/json: keys match fields case-insensitively, the later key wins, null is a no-op
    found = None
    for key, value in obj.items():
        if key.casefold() == name and value is not None:
            found = value
    return found


def _section(header: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = _field(header, name)
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be an object", name, expected="an object")
    return value or {}


def _text(obj: Mapping[str, Any], name: str, section: str) -> str:
    value = _field(obj, name)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string", f"{section}.{name}", expected="a string")
    return value or ""


def _string_list(value: Any, path: str) -> Tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split(","))  # common.go StringList: split on commas, no trimming
    if value is None or (isinstance(value, list) and all(isinstance(v, (str, type(None)))
                                                         for v in value)):
        return tuple(v or "" for v in value or ())  # a null item decodes to ""
    raise ConfigError("unknown format of a string list", path,
                      expected="a string or an array of strings")


def _headers(obj: Mapping[str, Any], section: str) -> Headers:
    table = _field(obj, "headers")
    if table is not None and not isinstance(table, Mapping):
        raise ConfigError("headers must be an object", f"{section}.headers", expected="an object")
    table = table or {}
    out = []
    for name in sorted(table):  # Go ranges over sortMapKeys: byte order, names as given
        path = f"{section}.headers" + (f".{name}" if _PLAIN_KEY.fullmatch(name) else
                                         f"[{json.dumps(name)}]")  # as schema.render_path
        if table[name] is None:
            raise ConfigError(f"empty HTTP header value: {name}", path, expected="a string list")
        out.append((name, _string_list(table[name], path)))
    return tuple(out)


def _warn_if_unreachable(path: str) -> None:
    # 4.34 accepts any path, but the server compares the *decoded* path without its query
    try:
        usable = _url_path(path.encode()) == path.encode()
    except _Malformed:
        usable = False
    if not usable:
        log.warning("request.path %r: a 4.34 server never accepts it (400 or 404)", path)


# -- writing heads (headers/http/config.go, http.go) ------------------------------------------

def request_bytes(cfg: HttpHeaderConfig, rand: Any = random) -> bytes:
    """One request head: a random path, then one random value per header, in config order."""
    path = _pick(cfg.request_paths, rand)
    head = f"{cfg.request_method} {path} HTTP/{cfg.request_version}\r\n"
    return (head + _header_lines(cfg.request_headers, rand) + "\r\n").encode()


def response_bytes(cfg: HttpHeaderConfig, rand: Any = random,
                   now: Optional[datetime] = None) -> bytes:
    """One response head; a Date header is added unless the config names one."""
    head = f"HTTP/{cfg.response_version} {cfg.response_status} {cfg.response_reason}\r\n"
    head += _header_lines(cfg.response_headers, rand)
    if not any(name.casefold() == "date" for name, _ in cfg.response_headers):
        head += f"Date: {http_date(now)}\r\n"
    return (head + "\r\n").encode()


def dated(reply: bytes, now: Optional[datetime] = None) -> bytes:
    """``BAD_REQUEST`` / ``NOT_FOUND`` with the Date line 4.34 puts last, as it sends them."""
    return reply[:-2] + f"Date: {http_date(now)}\r\n\r\n".encode()


def http_date(now: Optional[datetime] = None) -> str:
    # http.TimeFormat applied to time.Now(), which 4.34 leaves in *local* time: off UTC, the
    # "GMT" label is wrong, and mirrored. Names are spelled out: strftime follows the locale.
    t = datetime.now() if now is None else now
    return (f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT")


def _pick(values: Tuple[str, ...], rand: Any) -> str:
    # config.go pickString rolls the dice only for two or more values
    if len(values) < 2:
        return values[0] if values else ""
    return values[rand.randrange(len(values))]


def _header_lines(headers: Headers, rand: Any) -> str:
    return "".join(f"{name}: {_pick(values, rand)}\r\n" for name, values in headers)


# -- reading heads (http.go HeaderReader) ------------------------------------------------------

class HeadScan:
    """How many of a growing head's 2044-byte cuts were parsed already: each is parsed once,
    not again at every read (a head trickled a byte at a time cost a parse of every cut per
    byte, ~2.8 ms at 10 KB, in the thread that runs every inbound's handshakes)."""

    __slots__ = ("cuts",)

    def __init__(self) -> None:
        self.cuts = 0


def parse_request_head(buf: bytes, cfg: HttpHeaderConfig,
                       scan: Optional[HeadScan] = None) -> Optional[Tuple[str, int]]:
    """Server side: (the configured path matched, bytes used) or None for more; 400 / 404.
    Pass one ``scan`` for every call on one growing buffer."""
    try:
        used = _head_length(buf, scan)
        if used is None:
            return None
        path = _read_request(bytes(buf[:used]))
    except _Malformed as e:
        raise RemoteProtocolError(f"http header: {e}", reply=BAD_REQUEST) from None
    for candidate in cfg.request_paths:  # the decoded URL path, query dropped, exact match
        if candidate.encode() == path:
            return candidate, used
    raise RemoteProtocolError(f"http header: path {path!r} is not configured", reply=NOT_FOUND)


def parse_response_head(buf: bytes, scan: Optional[HeadScan] = None) -> Optional[int]:
    """Client side: bytes up to the response head's blank line, or None; never inspected
    further, except that 4.34's reader parses long heads as *requests* (see module doc)."""
    try:
        return _head_length(buf, scan)
    except _Malformed as e:
        raise RemoteProtocolError(f"http header response: {e}") from None


def _head_length(buf: bytes, scan: Optional[HeadScan] = None) -> Optional[int]:
    data = bytes(buf[:HEAD_LIMIT])
    end = data.find(_ENDING)
    last_cut = end - 1 if end >= 0 else len(data) - len(_ENDING)
    first = _STEP * (1 + (scan.cuts if scan is not None else 0))
    for cut in range(first, last_cut + 1, _STEP):  # each 2048-byte read that missed ENDING
        _read_request(data[:cut])
        if scan is not None:
            scan.cuts += 1
    if end >= 0:
        return end + len(_ENDING)
    if len(data) >= HEAD_LIMIT:
        raise _Malformed(f"head longer than {MAX_HEAD} bytes")
    return None


def _read_request(head: bytes) -> bytes:
    """Go's readRequest over ``head`` (maybe cut short): the URL path, or _Malformed.

    A head cut short ends in EOF mid-headers, which Go reports as ErrUnexpectedEOF: only the
    request line and each header line's shape are checked then. A partial last line counts
    as a line, keeping a lone trailing CR (bufio.ReadLine at EOF).
    """
    *lines, tail = head.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    lines += [tail] if tail else []
    method, _, rest = lines[0].partition(b" ")
    uri, space, proto = rest.partition(b" ")
    if not space:
        raise _Malformed("malformed HTTP request")
    if not _TOKEN.fullmatch(method):
        raise _Malformed("invalid method")
    version = _VERSION.fullmatch(proto)
    if version is None:
        raise _Malformed("malformed HTTP version")
    if method == b"CONNECT" and not uri.startswith(b"/"):
        uri = b"http://" + uri  # an authority-form target: its path is ""
    path = _url_path(uri)
    fields = _header_fields(lines[1:])
    if fields is not None:
        _check_framing((int(version[1]), int(version[2])), fields)
    return path


def _url_path(raw: bytes) -> bytes:
    """url.ParseRequestURI, down to the unescaped path (query split off, never a fragment)."""
    if _CTL.search(raw) or not raw or raw.startswith(b":"):
        raise _Malformed("invalid URL")
    if raw == b"*":
        return raw
    scheme = _SCHEME.match(raw)
    rest = (raw[scheme.end():] if scheme else raw).partition(b"?")[0]
    if not rest.startswith(b"/"):
        if scheme:
            return b""  # opaque URL
        raise _Malformed("invalid URI for request")
    if scheme and rest.startswith(b"//"):
        authority, slash, tail = rest[2:].partition(b"/")
        _check_authority(authority)
        rest = slash + tail
    if _BAD_ESCAPE.search(rest):
        raise _Malformed("invalid URL escape")
    return _ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), rest)


def _check_authority(authority: bytes) -> None:
    # url.parseAuthority / parseHost / validUserinfo: only whether they fail matters here
    userinfo, at, host = authority.rpartition(b"@")
    zone = b""
    if host.startswith(b"["):
        close = host.rfind(b"]")
        if close < 0:
            raise _Malformed("missing ']' in host")
        port, start = host[close + 1:], host.find(b"%25", 0, close)
        if start >= 0:
            host, zone = host[:start] + host[close:], host[start:close]
    else:
        port = host[host.rfind(b":"):] if b":" in host else b""
    zone_escapes = (bytes([int(h, 16)]) for h in _ESCAPE.findall(zone))
    if (not _PORT.fullmatch(port) or not _HOST.fullmatch(host) or not _ZONE.fullmatch(zone)
            or not all(e in b" %" or _HOST_SAFE.fullmatch(e) for e in zone_escapes)
            or at and (not _USERINFO.fullmatch(userinfo) or _BAD_ESCAPE.search(userinfo))):
        raise _Malformed("invalid host or userinfo")


def mime_fields(lines: List[bytes]) -> List[Tuple[bytes, bytes]]:
    """textproto.ReadMIMEHeader over a head's header lines (its blank line left out): the
    (name, value) pairs in order, names as sent, an empty name skipped as Go skips it; a
    ValueError names a line Go refuses."""
    return _field_list(lines + [b""]) or []  # the blank line ends it: never None


def request_fields(lines: List[bytes], version: Tuple[int, int]) -> List[Tuple[bytes, bytes]]:
    """The header lines of a request head (its blank line left out), as Go's readRequest
    reads them: textproto.ReadMIMEHeader's fields in order, each name as sent (an empty one
    skipped, as Go skips it), then the Host count and the framing (Transfer-Encoding,
    Content-Length) checked. A ValueError names what Go refuses. The WebSocket server's
    net/http reads its upgrade requests so."""
    fields = mime_fields(lines)
    _check_framing(version, _by_token(fields))
    return fields


def _header_fields(lines: List[bytes]) -> Optional[Dict[bytes, List[bytes]]]:
    """textproto.ReadMIMEHeader: {lower-case token name: values}, or None at EOF."""
    fields = _field_list(lines)
    return None if fields is None else _by_token(fields)


def _by_token(fields: List[Tuple[bytes, bytes]]) -> Dict[bytes, List[bytes]]:
    """{lower-case name: values}; other names are kept as-is by Go, and never match."""
    by_name: Dict[bytes, List[bytes]] = {}
    for name, value in fields:
        if _TOKEN.fullmatch(name):
            by_name.setdefault(name.lower(), []).append(value)
    return by_name


def _field_list(lines: List[bytes]) -> Optional[List[Tuple[bytes, bytes]]]:
    """textproto.ReadMIMEHeader's (name, value) pairs in order, or None at EOF."""
    merged: List[List[bytes]] = []  # each logical line's pieces, joined once (not += per fold)
    for line in lines:
        if not line:
            break
        if line[0] in b" \t":  # obs-fold continues the previous line
            if not merged:
                raise _Malformed("malformed MIME header initial line")
            merged[-1].append(line.strip(b" \t"))
        elif b":" not in line:
            raise _Malformed("malformed MIME header: missing colon")
        else:
            merged.append([line.strip(b" \t")])
    else:
        return None
    fields = []
    for pieces in merged:
        name, _, value = b" ".join(pieces).partition(b":")
        if name:
            fields.append((name, value.lstrip(b" \t")))
    return fields


def _check_framing(version: Tuple[int, int], fields: Dict[bytes, List[bytes]]) -> None:
    """readRequest's Host count, then transfer.go parseTransferEncoding / fixLength."""
    if len(fields.get(b"host", ())) > 1:
        raise _Malformed("too many Host headers")
    encodings = fields.get(b"transfer-encoding")
    if encodings is not None and (version >= (1, 1) or version == (0, 0)):  # 0.0 counts as 1.1
        if len(encodings) != 1 or encodings[0].strip(_SPACE).lower() != b"chunked":
            raise _Malformed("unsupported transfer encoding")
        names = b",".join(fields.get(b"trailer", ())).split(b",")
        if any(n.strip(_SPACE).lower() in _BAD_TRAILERS for n in names):
            raise _Malformed("bad trailer key")
        return  # chunked: Content-Length is dropped unread
    lengths = {v.strip(_SPACE) for v in fields.get(b"content-length", ())}
    if len(lengths) > 1:
        raise _Malformed("multiple Content-Length headers")
    length = lengths.pop() if lengths else b""
    if length and (not _DIGITS.fullmatch(length) or int(length) >= 1 << 63):
        raise _Malformed("bad Content-Length")
