"""``ShareLink``: one server as a share link describes it, limited to what v2sync honours.

Every codec builds a ShareLink through ``check`` so a link that parses is one v2sync can
run: an unsupported transport, security layer or cipher is refused here, by name, whatever
format it came in.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Tuple

from v2sync.common.errors import ConfigError

VMESS, VLESS, TROJAN, SHADOWSOCKS = "vmess", "vless", "trojan", "shadowsocks"
PROTOCOLS = (VMESS, VLESS, TROJAN, SHADOWSOCKS)

# A link is a line of text; a longer one is garbage, not a server (the longest real links,
# with a long WebSocket path and a name, are a few hundred bytes).
MAX_LINK_CHARS = 8 * 1024

# Networks v2sync dials (transport/internet); the rest are refused by the name users know.
NETWORKS = ("tcp", "ws")
NETWORK_ALIASES = {"raw": "tcp"}  # Xray renamed tcp to raw; v2rayN reads both
UNSUPPORTED_NETWORKS = {
    "kcp": "mKCP", "mkcp": "mKCP", "quic": "QUIC", "grpc": "gRPC", "gun": "gRPC",
    "http": "HTTP/2", "h2": "HTTP/2", "httpupgrade": "HTTPUpgrade", "splithttp": "SplitHTTP",
    "xhttp": "XHTTP", "domainsocket": "domain sockets (a local transport)",
}
SECURITIES = ("none", "tls")
UNSUPPORTED_SECURITIES = {"xtls": "XTLS", "reality": "REALITY"}
TCP_HEADERS = ("none", "http")
# VMess body security (v2sync.proxy.vmess.ids.SECURITY_NAMES; "zero" is not in it).
VMESS_METHODS = ("auto", "aes-128-gcm", "chacha20-poly1305", "none")
# Shadowsocks ciphers as 4.34 names them (infra/conf/shadowsocks.go cipherFromString): the
# AEAD ones and none; stream ciphers and SIP022 (2022-blake3-*) are not in 4.34.
SS_METHODS = {
    "aes-128-gcm": "aes-128-gcm", "aead_aes_128_gcm": "aes-128-gcm",
    "aes-256-gcm": "aes-256-gcm", "aead_aes_256_gcm": "aes-256-gcm",
    "chacha20-poly1305": "chacha20-poly1305", "chacha20-ietf-poly1305": "chacha20-poly1305",
    "aead_chacha20_poly1305": "chacha20-poly1305", "none": "none", "plain": "none",
}
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$")


@dataclass(frozen=True)
class ShareLink:
    """One server. ``secret`` is the VMess/VLESS id or the Trojan/Shadowsocks password;
    ``method`` the VMess body security, the Shadowsocks cipher or VLESS's ``none``."""

    protocol: str
    address: str
    port: int
    secret: str
    name: str = ""
    method: str = ""
    alter_id: int = 0
    network: str = "tcp"
    header_type: str = "none"  # tcpSettings.header.type
    host: str = ""  # WebSocket Host header, or the HTTP header's hosts (comma-separated)
    path: str = ""
    security: str = "none"
    sni: str = ""
    alpn: Tuple[str, ...] = ()
    # Link fields read but not honoured because they change nothing v2sync can do (a uTLS
    # fingerprint): the CLI says so instead of dropping them silently.
    ignored: Tuple[str, ...] = field(default=(), compare=False)


def fail(part: str, message: str, expected: str = "") -> ConfigError:
    return ConfigError(message, part, expected=expected)


def check(link: ShareLink) -> ShareLink:
    """``link`` if v2sync can run it; else a ConfigError naming the part at fault."""
    check_address(link.address, "address")
    if not 1 <= link.port <= 65535:
        raise fail("port", f"{link.port} is out of range", "expected 1-65535")
    if link.protocol in (VMESS, VLESS):
        check_uuid(link.secret, "id")
    elif not link.secret:
        raise fail("password", "is empty")
    check_network(link.network, link.header_type)
    check_security(link.security)
    if link.protocol == VMESS and link.method not in VMESS_METHODS:
        raise fail("security", f"VMess security {link.method!r} is not supported",
                   "expected one of " + ", ".join(VMESS_METHODS))
    if link.protocol == SHADOWSOCKS and link.method not in SS_METHODS.values():
        raise fail("method", f"cipher {link.method!r} is not supported by v2sync or v2ray 4.34",
                   "expected one of " + ", ".join(sorted(SS_METHODS)))
    if link.protocol == VLESS and link.method != "none":
        raise fail("encryption", f"VLESS encryption {link.method!r} is not defined",
                   "expected none")
    if not 0 <= link.alter_id <= 65535:
        raise fail("aid", f"{link.alter_id} is out of range", "expected 0-65535")
    for part, value in (("host", link.host), ("path", link.path), ("sni", link.sni),
                        *(("alpn", name) for name in link.alpn)):
        check_text(value, part)
    return link


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text(value: str, part: str) -> None:
    """No control byte: a Host header or a path holding CR LF made a config that ``test``
    then refused, naming the config's field, not the link's (found by a review)."""
    found = _CONTROL.search(value)
    if found is not None:
        raise fail(part, f"{value[:100]!r} holds a control character ({found.group()!r})")


def check_address(address: str, part: str) -> None:
    if not address:
        raise fail(part, "the server address is empty")
    try:
        ipaddress.ip_address(address)
        return
    except ValueError:
        pass
    if not _DOMAIN.match(address):
        raise fail(part, f"{address[:100]!r} is neither an IP address nor a domain name",
                   "IDN names in xn-- form, IPv6 in brackets inside a URL")


def check_network(network: str, header_type: str) -> None:
    if network in UNSUPPORTED_NETWORKS:
        raise fail("type", f"transport {network!r} ({UNSUPPORTED_NETWORKS[network]}) is not "
                   "supported by v2sync", "supported: tcp, ws")
    if network not in NETWORKS:
        raise fail("type", f"unknown transport {network[:50]!r}", "supported: tcp, ws")
    if network == "tcp" and header_type not in TCP_HEADERS:
        raise fail("headerType", f"TCP header {header_type[:50]!r} is not supported",
                   "expected none or http")


def check_security(security: str) -> None:
    if security in UNSUPPORTED_SECURITIES:
        raise fail("security", f"{security!r} ({UNSUPPORTED_SECURITIES[security]}) is not "
                   "supported by v2sync", "supported: none, tls")
    if security not in SECURITIES:
        raise fail("security", f"unknown security {security[:50]!r}", "supported: none, tls")


def check_uuid(text: str, part: str) -> None:
    from v2sync.proxy.vmess.ids import parse_uuid  # the parser VMess and VLESS configs use

    try:
        parse_uuid(text)
    except ValueError:
        raise fail(part, f"{text[:50]!r} is not a UUID", "expected a UUID") from None
