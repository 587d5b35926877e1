"""The community URL form of share links (XTLS/Xray-core#91, "VMessAEAD / VLESS 分享链接标准提案"),
used for ``vless://`` and ``trojan://`` and, with no alterId, for ``vmess://``::

    protocol://$(uuid or password)@host:port?type=ws&security=tls&path=%2Fray&...#$(name)

Values are percent-encoded (``encodeURIComponent``), names are case-sensitive, a field may
not repeat, an empty value reads as absent (as v2rayN and v2rayNG read it: panels such as
Marzban write ``host=&sni=``) and IPv6 hosts are in brackets. Defaults (#91 §4): ``type``
tcp, ``security`` none (Trojan: tls, as trojan-go and v2rayN write it), ``encryption`` auto for VMess and
none for VLESS, ``path`` "/", ``headerType`` none. ``flow`` exists only for XTLS, which
v2sync has not, so any flow is refused by name.
"""
from __future__ import annotations

from typing import Dict, List, Tuple
from urllib.parse import quote, unquote, urlsplit

from v2sync.infra.share.model import (NETWORK_ALIASES, TROJAN, VLESS, VMESS,
                                      UNSUPPORTED_SECURITIES, ShareLink, check, fail)

SCHEMES = {"vless": VLESS, "trojan": TROJAN, "vmess": VMESS}
DEFAULT_SECURITY = {VLESS: "none", VMESS: "none", TROJAN: "tls"}
DEFAULT_METHOD = {VLESS: "none", VMESS: "auto", TROJAN: ""}
# Fields read into the ShareLink, or refused with a reason (the feature they belong to).
USED = ("type", "security", "sni", "alpn", "host", "path", "headerType", "encryption", "flow")
REFUSED = {
    "seed": "mKCP", "quicSecurity": "QUIC", "key": "QUIC", "serviceName": "gRPC",
    "mode": "gRPC", "authority": "gRPC", "pbk": "REALITY", "sid": "REALITY",
    "spx": "REALITY", "pqv": "REALITY",
}
MAX_FIELDS = 64
# #91 names fields case-sensitively, but v2rayN reads them in any case (ParseQueryString):
# a link with ?Security=tls must not become a plain-TCP config.
CANONICAL = {key.lower(): key for key in (*USED, *REFUSED)}


def parse(text: str) -> ShareLink:
    scheme, _, rest = text.partition("://")
    protocol = SCHEMES[scheme.lower()]
    try:
        parts = urlsplit("http://" + rest)  # "http" so every Python splits it the same way
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise fail("address", f"the host or port is malformed: {e}"[:200]) from None
    userinfo, at, _ = parts.netloc.rpartition("@")
    if not at:
        raise fail("id" if protocol != TROJAN else "password",
                   "is missing", "expected protocol://ID@host:port")
    if port is None:
        raise fail("port", "is missing", "expected protocol://ID@host:port")
    if parts.path not in ("", "/"):
        raise fail("path", f"{parts.path[:50]!r} after the port is not part of the format",
                   "options go in the query: ?type=ws&path=%2Fray")
    fields = _query(parts.query)
    _refuse(fields)
    network = NETWORK_ALIASES.get(fields.get("type", "tcp"), fields.get("type", "tcp"))
    ws_or_http = network == "ws" or fields.get("headerType") == "http"
    link = ShareLink(
        protocol=protocol, address=host or "", port=port, secret=unquote(userinfo),
        name=unquote(parts.fragment), method=fields.get("encryption", DEFAULT_METHOD[protocol]),
        network=network, header_type=fields.get("headerType", "none") if network == "tcp"
        else "none",
        host=fields.get("host", ""), path=fields.get("path", "/" if ws_or_http else ""),
        security=fields.get("security", DEFAULT_SECURITY[protocol]), sni=fields.get("sni", ""),
        alpn=tuple(p for p in fields.get("alpn", "").split(",") if p),
        ignored=tuple(sorted(k for k in fields if k not in USED)))
    if protocol == TROJAN and link.method:
        raise fail("encryption", "is not a Trojan field")
    return check(link)


def dump(link: ShareLink) -> str:
    fields: List[Tuple[str, str]] = []
    if link.protocol == VLESS:
        fields.append(("encryption", link.method or "none"))
    elif link.protocol == VMESS and link.method not in ("", "auto"):
        fields.append(("encryption", link.method))
    fields.append(("security", link.security))
    fields.append(("type", link.network))
    if link.network == "tcp" and link.header_type != "none":
        fields.append(("headerType", link.header_type))
    for key, value in (("host", link.host), ("path", link.path), ("sni", link.sni),
                       ("alpn", ",".join(link.alpn))):
        if value:
            fields.append((key, value))
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in fields)
    host = f"[{link.address}]" if ":" in link.address else link.address
    name = f"#{quote(link.name, safe='')}" if link.name else ""
    scheme = {v: k for k, v in SCHEMES.items()}[link.protocol]
    return f"{scheme}://{quote(link.secret, safe='')}@{host}:{link.port}?{query}{name}"


def _query(query: str) -> Dict[str, str]:
    fields: Dict[str, str] = {}
    seen = set()
    pieces = [p for p in query.split("&") if p]
    if len(pieces) > MAX_FIELDS:
        raise fail("query", f"has {len(pieces)} fields", f"expected at most {MAX_FIELDS}")
    for piece in pieces:
        key, _, value = piece.partition("=")
        key = unquote(key)
        key = CANONICAL.get(key.lower(), key)
        if key in seen:
            raise fail(key[:50], "appears twice", "each field at most once (Xray-core#91 §2)")
        seen.add(key)
        if value:  # empty reads as absent, as v2rayN and v2rayNG read it (panels write host=)
            fields[key] = unquote(value)
    return fields


def _refuse(fields: Dict[str, str]) -> None:
    flow = fields.get("flow")
    if flow:
        raise fail("flow", f"{flow[:50]!r} (XTLS flow control) is not supported by v2sync",
                   "a link without flow")
    security = fields.get("security", "")
    if security in UNSUPPORTED_SECURITIES:
        return  # check() names the security layer itself
    for key in fields:
        if key in REFUSED and fields.get("type", "tcp") not in ("kcp", "quic", "grpc"):
            raise fail(key, f"is a {REFUSED[key]} field, which v2sync does not support")
