"""Fallbacks: a connection that is not VLESS/Trojan for a known user goes to a web server
(v2ray ``proxy/vless/inbound/inbound.go`` and ``proxy/trojan/server.go`` carry the same
code twice; ``infra/conf/vless.go`` and ``trojan.go`` the same config code twice).

Config (``fallbacks[{name, alpn, path, type, dest, xver}]``) is checked as 4.34 checks it,
with its messages. Selection follows 4.34: by the negotiated ALPN, then by the path of an
HTTP/1 request line in the first read; ``""`` entries are the defaults, copied under every
other ALPN. ``name`` (the TLS server name) is a later addition (Xray's), not in 4.34, which
ignores the key: it selects first, by exact name or the longest configured name the SNI
contains; with no ``name`` set, selection is exactly 4.34's.

Serving: dial ``dest`` (tcp ``host:port`` or a unix socket, ``@`` abstract, ``@@`` abstract
padded as haproxy expects), send the PROXY header of ``xver`` and every byte already read,
then relay both ways under the level-0 policy.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from v2sync.common.errors import ConfigError, RemoteProtocolError, TransportError, join_path, shown
from v2sync.common.net import Address, AddressKind, Destination, decimal, split_host_port
from v2sync.common.protocol.proxy_protocol import encode as encode_proxy_header
from v2sync.common.task import Steps
from v2sync.features.proxy import ProxyContext
from v2sync.infra.conf.fields import get_items, require_object
from v2sync.infra.conf.model import LevelPolicy
from v2sync.proxy.relay import relay_stream_steps, relay_upstream_steps
from v2sync.transport.internet.config import DsSettings, StreamSettings
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.counting import CountingConnection
from v2sync.transport.internet.dialer import dial_with_retry
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.internet.tls import TlsConnection
from v2sync.transport.link import Link, new_link_pair

log = logging.getLogger(__name__)

DIAL_ATTEMPTS = 5  # inbound.go: retry.ExponentialBackoff(5, 100)
DIAL_STEP = 0.1
# What a fallback's link holds each way. 4.34 copies the two sockets straight, a few 2 KiB
# buffers at a time, with no pipe: the policy's bufferSize (512 KiB) would let a client
# that stops reading a download pin half a MiB more than 4.34 does.
FALLBACK_PIPE_LIMIT = 64 * 1024
# inbound.go: the path is looked for in the first 64 bytes, starting at offsets 4..8.
PATH_SEARCH_LIMIT = 64
PATH_START_RANGE = range(4, 9)
MAX_XVER = 2
SERVE_TYPE = "serve"  # "serve-ws-none": accepted by 4.34's config, never dialable


@dataclass(frozen=True)
class Fallback:
    dest: str
    type: str
    name: str = ""
    alpn: str = ""
    path: str = ""
    xver: int = 0


# -- config ----------------------------------------------------------------------------

def parse_fallbacks(settings: Mapping[str, Any], path: str, label: str
                    ) -> Tuple[Fallback, ...]:
    """``settings.fallbacks`` of a VLESS or Trojan inbound; ``label`` starts 4.34's
    messages ("VLESS" / "Trojan")."""
    if "fallback" in settings:  # even null: 4.34 keeps it as raw JSON, which is not nil
        raise ConfigError(f'{label} settings: please use "fallbacks":[{{}}] instead of '
                          '"fallback":{}', join_path(path, "fallback"),
                          expected="a fallbacks array")
    return tuple(_fallback(entry, where, label)
                 for entry, where in get_items(settings, "fallbacks", path))


def _fallback(raw: Any, path: str, label: str) -> Fallback:
    entry = require_object(raw, path)
    texts = {key: _text(entry, key, path) for key in ("name", "alpn", "path", "type")}
    if texts["path"] and not texts["path"].startswith("/"):
        raise ConfigError(f'{label} fallbacks: "path" must be empty or start with "/"',
                          join_path(path, "path"))
    dest, kind = _dest(entry.get("dest", ""), texts["type"])  # "dest": null is kept (x-raw)
    if kind and kind not in DIALED_TYPES:
        # 4.34 hands any network Go knows to its dialer ("udp" sends the client's bytes as
        # datagrams); refused here by name rather than failing each connection.
        raise ConfigError(f"fallback type {shown(kind)} is not supported by v2sync",
                          join_path(path, "type"), expected="tcp, tcp4, tcp6 or unix")
    if not kind:
        raise ConfigError(f'{label} fallbacks: please fill in a valid value for every "dest"',
                          join_path(path, "dest"),
                          expected='a port, "addr:port", a unix socket path or "@name"')
    xver = entry.get("xver", 0)
    if isinstance(xver, bool) or not isinstance(xver, int) or xver < 0:
        raise ConfigError(f"invalid xver {shown(xver)}", join_path(path, "xver"),
                          expected="0, 1 or 2")
    if xver > MAX_XVER:
        raise ConfigError(f'{label} fallbacks: invalid PROXY protocol version, "xver" only '
                          "accepts 0, 1, 2", join_path(path, "xver"))
    return Fallback(dest, kind, texts["name"], texts["alpn"], texts["path"], xver)


def _text(entry: Mapping[str, Any], key: str, path: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{shown(value)} is not a string", join_path(path, key),
                          expected="expected a string")
    return value


def _dest(raw: Any, kind: str) -> Tuple[str, str]:
    """(dest, type) as vless.go builds them; type "" means invalid. A number must fit a
    uint16 (Go unmarshals it so) and null reads as 0; any other JSON value, or none at
    all, counts as empty."""
    if raw is None:
        dest = "0"
    elif isinstance(raw, int) and not isinstance(raw, bool):
        dest = str(raw) if 0 <= raw <= 0xFFFF else ""
    else:
        dest = raw if isinstance(raw, str) else ""
    if kind or not dest:
        return dest, kind
    if dest == "serve-ws-none":
        return dest, SERVE_TYPE
    if dest[0] in "@/":
        return dest, "unix"
    if _go_atoi(dest) is not None:
        dest = "127.0.0.1:" + dest
    return dest, ("tcp" if split_host_port(dest) is not None else "")


# Go network names a fallback's "type" may give, and the families each dials.
TCP_FAMILIES = {"tcp": "AsIs", "tcp4": "UseIPv4", "tcp6": "UseIPv6"}
DIALED_TYPES = frozenset({*TCP_FAMILIES, "unix", SERVE_TYPE})
_INT64 = 1 << 63


def _go_atoi(text: str) -> Optional[int]:
    """Go's ``strconv.Atoi`` on 64 bits: an optional sign, then ASCII digits, in range."""
    value = decimal(text[1:] if text[:1] in ("+", "-") else text)
    if value is None:
        return None
    value = -value if text[0] == "-" else value
    return value if -_INT64 <= value < _INT64 else None


# -- selection -------------------------------------------------------------------------

Paths = Dict[str, Fallback]
Alpns = Dict[str, Paths]


class FallbackTable:
    """name -> alpn -> path -> Fallback, with the defaults ("") copied in as 4.34 does."""

    def __init__(self, fallbacks: Tuple[Fallback, ...]):
        self.fallbacks = fallbacks
        table: Dict[str, Alpns] = {}
        for fb in fallbacks:  # a later duplicate replaces an earlier one, as in Go's maps
            table.setdefault(fb.name, {}).setdefault(fb.alpn, {})[fb.path] = fb
        default = table.get("", {})
        for name, alpns in table.items():
            if name:
                for alpn in default:
                    alpns.setdefault(alpn, {})
        for alpns in table.values():
            for alpn, paths in alpns.items():
                if alpn:
                    _fill(paths, alpns.get("", {}))
        for name, alpns in table.items():
            if name:
                for alpn, paths in default.items():
                    _fill(alpns[alpn], paths)
        self._table = table

    def __bool__(self) -> bool:
        return bool(self._table)

    def select_for(self, conn: Connection, first: bytes) -> Fallback:
        """The fallback for a connection whose first read was ``first``."""
        return self.select(*_tls_facts(conn), first)

    def select(self, server_name: str, alpn: str, first: bytes) -> Fallback:
        """By TLS server name, negotiated ALPN and the first read, as 4.34 selects."""
        names = self._table
        name = ""
        if len(names) > 1 or "" not in names:
            name = server_name if server_name in names else _longest_within(server_name, names)
        alpns = names.get(name) or names.get("")
        if alpns is None:
            raise RemoteProtocolError('fallback: failed to find the default "name" config')
        if not (len(alpns) > 1 or "" not in alpns) or alpn not in alpns:
            alpn = ""
        paths = alpns.get(alpn)
        if paths is None:
            raise RemoteProtocolError('fallback: failed to find the default "alpn" config')
        path = ""
        if len(paths) > 1 or "" not in paths:
            found = request_path(first)
            path = found if found in paths else ""
        fallback = paths.get(path)
        if fallback is None:
            raise RemoteProtocolError('fallback: failed to find the default "path" config')
        return fallback


def _fill(paths: Paths, defaults: Paths) -> None:
    for path, fb in defaults.items():
        paths.setdefault(path, fb)


def _longest_within(server_name: str, names: Dict[str, Alpns]) -> str:
    if not server_name:
        return ""
    return max((n for n in names if n and n in server_name), key=len, default="")


def _tls_facts(conn: Connection) -> Tuple[str, str]:
    """(server name, ALPN) when TLS is the connection's outer layer (4.34: a ``*tls.Conn``;
    behind WebSocket there is none to ask)."""
    tls = _outer_tls(conn)
    return (tls.server_name, tls.alpn or "") if tls is not None else ("", "")


def _outer_tls(conn: Connection) -> Optional[TlsConnection]:
    """The TLS layer right under the proxy (the traffic counters looked through: they are
    no layer of 4.34's); None on plain TCP and behind WebSocket."""
    if isinstance(conn, CountingConnection):
        conn = conn.inner
    return conn if isinstance(conn, TlsConnection) else None


def request_path(first: bytes) -> str:
    """The path of an HTTP/1 request line, found as inbound.go finds it: 18 bytes or more,
    not h2c's preface (``*`` at offset 4), a " /" starting at offsets 4..8, ending at a space
    within the first 64 bytes. "" when there is none."""
    if len(first) < 18 or first[4:5] == b"*":
        return ""
    for i in PATH_START_RANGE:
        if first[i:i + 1] == b"/" and first[i - 1:i] == b" ":
            for j in range(i + 1, min(len(first), PATH_SEARCH_LIMIT)):
                if first[j] in b"\r\n":
                    return ""
                if first[j] == ord(" "):
                    # Compared as bytes with the config's UTF-8, as inbound.go compares
                    # them: "/ü" matches its UTF-8 bytes, not the Latin-1 byte 0xFC.
                    return first[i:j].decode("utf-8", "surrogateescape")
            return ""
    return ""


# -- serving ---------------------------------------------------------------------------

def dial_fallback(fallback: Fallback) -> Connection:
    if fallback.type in TCP_FAMILIES:
        parts = split_host_port(fallback.dest)
        port = _dial_port(parts[1]) if parts is not None else None
        if parts is None or port is None:
            raise TransportError(f"fallback: cannot dial {fallback.dest!r}: bad address or port")
        dest = Destination(Address.parse(parts[0] or "127.0.0.1"), port)
        return dial_with_retry(dest, DIAL_ATTEMPTS, DIAL_STEP,
                               strategy=TCP_FAMILIES[fallback.type])
    if fallback.type == "unix":
        client = StreamClient(StreamSettings(network="domainsocket", ds=_unix(fallback.dest)))
        target = Destination(Address(fallback.dest, AddressKind.DOMAIN), 0)
        return dial_with_retry(target, DIAL_ATTEMPTS, DIAL_STEP, client)
    raise TransportError(f"fallback: failed to dial to {fallback.dest}: "
                         f"unknown network {fallback.type!r}")


def _dial_port(text: str) -> Optional[int]:
    """A port as Go's dialer reads one: digits after an optional "+", or a service name
    ("http"); None for anything out of 0-65535 or unknown."""
    number = decimal(text[1:] if text.startswith("+") else text)
    if number is None and text.isascii() and text.isprintable() and text:
        try:
            number = socket.getservbyname(text, "tcp")
        except OSError:
            return None
    return number if number is not None and number <= 0xFFFF else None


def _unix(dest: str) -> DsSettings:
    if dest.startswith("@@"):  # vless.go pads it to the whole sun_path, for haproxy
        return DsSettings(dest[1:], abstract=True, padding=True)
    if dest.startswith("@"):
        return DsSettings(dest, abstract=True)
    return DsSettings(dest)


def proxy_header(fallback: Fallback, conn: Connection) -> bytes:
    if not fallback.xver:
        return b""
    return encode_proxy_header(fallback.xver, conn.remote, conn.local)


def serve_fallback(ctx: ProxyContext, name: str, conn: Connection, fallback: Fallback,
                   replay: bytes) -> Steps[None]:
    """Relay ``conn`` to the fallback: the PROXY header, ``replay``, then both ways.

    As a dispatched connection is relayed: the client <-> a link (``relay_stream_steps``),
    and the link <-> the target in a task of its own (``relay_upstream_steps``), each
    reader parked while idle and each direction bounded by the link's pipe. A direct
    relay of the two sockets held two threads per idle fallback connection (the
    unauthenticated path: 500 idle ones, +1,000 threads; 4.34: +2), and a client that
    stopped reading its download had 1 MiB reads pile up, ~3.5 MiB a connection over TLS
    (4.34: ~0.1 MiB); found by a review.

    4.34 copies the two sockets with one timer, and a direction's end starts the other's
    last timeout (uplinkOnly, downlinkOnly) once its last byte was written. Here each half
    has its own timer, so each starts it only where that is so (``_delivered_only``).
    """
    head = proxy_header(fallback, conn)
    try:
        target = dial_fallback(fallback)
    except TransportError as e:
        # 4.34 logs the failed dial at Warning ("failed to dial to ...").
        log.warning("%s: fallback: failed to dial to %s: %s", name, fallback.dest, e)
        raise
    target.settimeout(None)  # the relay's activity timer bounds it from here
    policy = ctx.policy.for_level(0)  # inbound.go: the handshake's level-0 policy
    client_side, target_side = new_link_pair(FALLBACK_PIPE_LIMIT, name)
    client_side.writer.write(head + replay)  # a fresh pipe takes one write whatever its size
    client_policy, target_policy = _delivered_only(policy)
    try:
        ctx.threads.spawn_steps(f"fallback-{name}", _target_steps(
            ctx, name, target_policy, target, target_side), ahead=True)
    except RuntimeError as e:  # "can't start new thread"
        target.close()
        raise TransportError(f"fallback: no thread for {fallback.dest}: {e}") from e

    def finish() -> None:
        tls = _outer_tls(conn)
        if tls is not None:
            # 4.34's response copy ends with task.Close(writer), which reaches a *tls.Conn
            # and closes the client at once (on TCP that writer's Close does nothing, and
            # the client's end waits for uplinkOnly, as here).
            tls.say_goodbye()
            conn.abort()

    error = yield from relay_stream_steps(ctx, name, client_policy, conn, client_side, finish)
    if error is not None:
        log.debug("%s: fallback to %s ended: %s", name, fallback.dest, error)


def _delivered_only(policy: LevelPolicy) -> Tuple[LevelPolicy, LevelPolicy]:
    """The client half's and the target half's policies. A half whose reader ended has
    only queued its last bytes in the link, which the other half may still be writing to a
    slow peer: its last timeout (and its abort, which drops what the link holds) would cut
    that tail, so it keeps connIdle there. The other half starts the timeout once the
    bytes are written: the client half when the answer is out (uplinkOnly), the target
    half when the request is in (downlinkOnly). A review lost the tails of downloads and
    of half-closed uploads with each half's own."""
    return (dataclasses.replace(policy, downlink_only=policy.conn_idle),
            dataclasses.replace(policy, uplink_only=policy.conn_idle))


def _target_steps(ctx: ProxyContext, name: str, policy: LevelPolicy, target: Connection,
                  link: Link) -> Steps[None]:
    """The target's side of a fallback. The client's end of data is not passed on (no
    half-close), as 4.34 passes none: nginx behind ``proxy_pass`` takes a half-closed
    client for one that left and answers nothing (499)."""
    try:
        error = yield from relay_upstream_steps(ctx, name, policy, target, link)
    finally:
        target.close()
    if error is not None:
        log.debug("%s: fallback target ended: %s", name, error)
