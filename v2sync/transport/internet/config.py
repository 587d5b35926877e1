"""``streamSettings`` as the transport layer uses it (v2ray ``transport/internet/config.go``
and the JSON side in ``infra/conf/transport_internet.go``).

``build_stream_settings`` turns the canonical JSON (network aliases already resolved,
the top-level ``transport`` section already merged in) into frozen objects, reading
certificate files once, so a bad path or PEM is a config error at load time rather than a
failed handshake later. Errors carry JSON paths relative to ``streamSettings``.
"""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Sequence, Tuple

from v2sync.common.errors import ConfigError, LocalProtocolError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from v2sync.transport.internet.headers.http import HttpHeaderConfig

USAGE_ENCIPHERMENT = "encipherment"
USAGE_VERIFY = "verify"
USAGE_ISSUE = "issue"


@dataclass(frozen=True)
class CertificateEntry:
    """One ``tlsSettings.certificates[]`` item: PEM text, as 4.34 keeps it (files read once)."""

    certificate: bytes
    key: Optional[bytes]
    usage: str = USAGE_ENCIPHERMENT


@dataclass(frozen=True)
class TlsSettings:
    server_name: str = ""
    allow_insecure: bool = False
    alpn: Tuple[str, ...] = ()  # empty: the transport's 4.34 default applies
    certificates: Tuple[CertificateEntry, ...] = ()
    disable_system_root: bool = False
    enable_session_resumption: bool = False

    def key_pairs(self) -> Tuple[CertificateEntry, ...]:
        return tuple(c for c in self.certificates if c.usage == USAGE_ENCIPHERMENT)


MAX_ALPN_NAME = 255  # RFC 7301: a protocol name is 1 to 255 bytes


def server_alpn(names: Sequence[str]) -> List[str]:
    """The names a server can be asked for. Go's server keeps an empty name, or one over
    255 bytes (a trailing comma in ``"alpn": "h2,"`` makes one), and never matches it, as
    no client can send it; the ssl module refuses such names, and names that are not ASCII,
    so they are left out (a config 4.34 serves was refused as an internal error). None
    left: no ALPN, as when nothing overlaps."""
    return [name for name in names if name.isascii() and 0 < len(name) <= MAX_ALPN_NAME]


def client_alpn(names: Sequence[str]) -> List[bytes]:
    """The names a client offers, as Go sends them (UTF-8). An empty name or one over 255
    bytes is refused here, by name: 4.34 takes such a config, then fails every dial ("tls:
    invalid NextProtos value")."""
    wire = [name.encode() for name in names]
    for name in wire:
        if not 0 < len(name) <= MAX_ALPN_NAME:
            raise ConfigError(f"ALPN name {name.decode()!r} cannot be offered",
                              "tlsSettings.alpn", expected="expected names of 1 to 255 bytes; "
                              "4.34 takes it and fails every dial")
    return wire


@dataclass(frozen=True)
class WsSettings:
    path: str = "/"
    headers: Tuple[Tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DsSettings:
    path: str = ""
    abstract: bool = False
    padding: bool = False

    def address(self) -> str:
        """The AF_UNIX address (``GetUnixAddr``): abstract names start with NUL, and with
        ``padding`` fill all 108 bytes of sun_path as haproxy expects. A path that starts
        with ``@`` is abstract even without ``abstract`` (unpadded: GetUnixAddr pads only
        for ``abstract``), as Go's syscall package turns a leading ``@`` into the NUL."""
        path = self.path
        if not self.abstract:
            return "\0" + path[1:] if path.startswith("@") else path
        name = path[1:] if path.startswith("@") else path
        if self.padding:
            return "\0" + name + "\0" * (SUN_PATH_SIZE - 1 - len(name.encode()))
        return "\0" + name


SUN_PATH_SIZE = 108


@dataclass(frozen=True)
class SockoptSettings:
    mark: int = 0
    tcp_fast_open: Optional[bool] = None  # None: leave the kernel default alone
    tproxy: str = "off"  # "off", "redirect" or "tproxy" (transport/internet/tproxy.py)


@dataclass(frozen=True)
class StreamSettings:
    network: str = "tcp"
    security: str = "none"
    tls: Optional[TlsSettings] = None
    tcp_header: Optional[HttpHeaderConfig] = None
    ws: WsSettings = field(default_factory=WsSettings)
    ds: DsSettings = field(default_factory=DsSettings)
    sockopt: SockoptSettings = field(default_factory=SockoptSettings)
    # tcpSettings/wsSettings ``acceptProxyProtocol``: 4.34's tcp and ws listeners copy it
    # over sockopt's (which is ignored, with a warning).
    accept_proxy_protocol: bool = False


def build_stream_settings(network: str, security: str, raw: Mapping[str, Any],
                          server: bool) -> StreamSettings:
    """``server``: for an inbound, which must hold a certificate and key to serve TLS."""
    tls = build_tls(raw.get("tlsSettings") or {}) if security == "tls" else None
    if server and tls is not None and not any(c.key for c in tls.key_pairs()):
        raise ConfigError("a TLS server needs a certificate and its key",
                          "tlsSettings.certificates",
                          expected="expected an entry with certificateFile/certificate and "
                                   "keyFile/key (usage encipherment)")
    if not server and tls is not None:
        client_alpn(tls.alpn)  # refused here, where the error names its config path
    return StreamSettings(
        network=network,
        security=security,
        tls=tls,
        tcp_header=_tcp_header(raw.get("tcpSettings") or {}),
        ws=build_ws(raw.get("wsSettings") or {}),
        ds=build_ds(raw.get("dsSettings") or {}, network),
        sockopt=build_sockopt(raw.get("sockopt") or {}),
        accept_proxy_protocol=_accepts_proxy_protocol(network, raw),
    )


# Which transport's own settings carry the switch (tcp/hub.go, websocket/hub.go).
_PROXY_PROTOCOL_KEYS = {"tcp": "tcpSettings", "websocket": "wsSettings"}


def _accepts_proxy_protocol(network: str, raw: Mapping[str, Any]) -> bool:
    """From ``tcpSettings`` or ``wsSettings`` alone: 4.34's tcp and ws listeners overwrite
    ``sockopt.acceptProxyProtocol`` with their own value, and its domain socket reads none
    (the schema warns about the sockopt key)."""
    own = raw.get(_PROXY_PROTOCOL_KEYS.get(network, "")) or {}
    return bool(own.get("acceptProxyProtocol"))


def _tcp_header(tcp: Mapping[str, Any]) -> Optional[HttpHeaderConfig]:
    header = tcp.get("header") or {}
    if header.get("type", "none") != "http":
        return None
    from v2sync.transport.internet.headers.http import build_header_config
    try:
        return build_header_config(header)
    except ConfigError as e:
        raise e.located(prefix="tcpSettings.header") from None


def build_ws(ws: Mapping[str, Any]) -> WsSettings:
    # websocket/config.go GetNormalizedPath; "Path" is the misspelled legacy key.
    path = ws.get("path") or ws.get("Path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    headers = tuple((str(k), str(v)) for k, v in (ws.get("headers") or {}).items())
    from v2sync.transport.internet.websocket.handshake import build_request
    try:  # the request the dialer will send: a bad header fails the config, not each dial
        # (a path Go cannot parse fails each dial, as in 4.34: a server may serve it)
        build_request("check.invalid", "/", "AAAAAAAAAAAAAAAAAAAAAA==", dict(headers))
    except LocalProtocolError as e:
        raise ConfigError(str(e), "wsSettings.headers",
                          expected="expected ordinary HTTP header names and values") from None
    return WsSettings(path, headers)


def build_ds(ds: Mapping[str, Any], network: str) -> DsSettings:
    settings = DsSettings(ds.get("path", ""), bool(ds.get("abstract")), bool(ds.get("padding")))
    if network == "domainsocket" and not settings.path:
        raise ConfigError("empty domain socket path", "dsSettings.path",
                          expected="expected a socket file path, or a name with abstract: true")
    if network == "domainsocket" and not settings.abstract and "\0" in settings.path:
        # 4.34 fails at start to create <path>.lock ("invalid argument"); v2sync's start
        # failed with a traceback, and a reload to it took the running config down.
        raise ConfigError("a NUL byte in a domain socket path", "dsSettings.path",
                          expected="expected a path without NUL, or a name with abstract: true")
    if network == "domainsocket" and len(settings.address().encode()) > SUN_PATH_SIZE - 1 \
            and not settings.padding:
        raise ConfigError("domain socket path too long", "dsSettings.path",
                          expected=f"expected at most {SUN_PATH_SIZE - 1} bytes")
    return settings


def build_sockopt(opt: Mapping[str, Any]) -> SockoptSettings:
    # SocketConfig.Build: any tproxy value but "redirect" and "tproxy" means off.
    mode = str(opt.get("tproxy") or "off").lower()
    settings = SockoptSettings(int(opt.get("mark", 0)), opt.get("tcpFastOpen"),
                               mode if mode in ("redirect", "tproxy") else "off")
    if settings.mark and not hasattr(socket, "SO_MARK"):
        raise ConfigError("sockopt mark needs SO_MARK, which this platform lacks", "sockopt.mark",
                          expected="expected 0 (Linux only)")
    if settings.tcp_fast_open is not None and not hasattr(socket, "TCP_FASTOPEN"):
        raise ConfigError("sockopt tcpFastOpen needs TCP_FASTOPEN, which this platform lacks",
                          "sockopt.tcpFastOpen", expected="expected it unset")
    return settings


def build_tls(tls: Mapping[str, Any]) -> TlsSettings:
    certificates = tuple(_certificate(c, f"tlsSettings.certificates[{i}]")
                         for i, c in enumerate(tls.get("certificates") or ()))
    alpn = tls.get("alpn") or ()
    return TlsSettings(
        server_name=tls.get("serverName", ""),
        allow_insecure=bool(tls.get("allowInsecure")),
        alpn=tuple([alpn] if isinstance(alpn, str) else alpn),
        certificates=certificates,
        disable_system_root=bool(tls.get("disableSystemRoot")),
        enable_session_resumption=bool(tls.get("enableSessionResumption")),
    )


def _certificate(raw: Mapping[str, Any], path: str) -> CertificateEntry:
    usage = _usage(raw.get("usage"), path)
    cert = _file_or_lines(raw, "certificateFile", "certificate", path)
    if cert is None:
        raise ConfigError("missing certificate", path,
                          expected="expected certificateFile or certificate")
    key = _file_or_lines(raw, "keyFile", "key", path)
    entry = CertificateEntry(cert, key, usage)
    _check_pem(entry, path)
    return entry


def _usage(raw: Any, path: str) -> str:
    """4.34 reads a usage it does not know as encipherment (TLSCertConfig.Build); "issue"
    (a CA that signs a certificate for each name asked) v2sync does not do."""
    usage = str(raw or USAGE_ENCIPHERMENT).lower()
    if usage == USAGE_ISSUE:
        raise ConfigError(f"certificate usage {usage!r} is not supported by v2sync",
                          f"{path}.usage", expected="supported: encipherment, verify")
    if usage not in (USAGE_ENCIPHERMENT, USAGE_VERIFY):
        log.warning("%s.usage: %r is read as encipherment, as V2Ray 4.34 reads any usage "
                    "it does not know", path, usage)
        return USAGE_ENCIPHERMENT
    return usage


def _file_or_lines(raw: Mapping[str, Any], file_key: str, lines_key: str,
                   path: str) -> Optional[bytes]:
    """``readFileOrString``: a file path wins; otherwise the lines joined with newlines."""
    if raw.get(file_key):
        try:
            with open(raw[file_key], "rb") as f:
                return f.read()
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
            raise ConfigError(f"failed to read {raw[file_key]!r}: "
                              f"{getattr(e, 'strerror', None) or e}",
                              f"{path}.{file_key}",
                              expected="expected a readable PEM file") from None
    lines = raw.get(lines_key)
    if lines:
        return "\n".join([lines] if isinstance(lines, str) else lines).encode()
    return None


def _check_pem(entry: CertificateEntry, path: str) -> None:
    """Parse now, so a broken certificate fails the config, not every later handshake."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    try:
        x509.load_pem_x509_certificate(entry.certificate)  # the first; 3.4-safe API
    except ValueError as e:
        raise ConfigError(f"invalid PEM certificate: {e}", path,
                          expected="expected a PEM CERTIFICATE block") from None
    if entry.key is None:
        return  # a client may list a CA or the server's certificate to trust it
    try:
        load_pem_private_key(entry.key, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid PEM private key: {e}", path,
                          expected="expected an unencrypted PEM PRIVATE KEY block") from None
