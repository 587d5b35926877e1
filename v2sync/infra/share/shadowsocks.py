"""SIP002 ``ss://`` links (shadowsocks.org/doc/sip002.html)::

    ss://websafe-base64(method:password)@host:port/?plugin=...#tag
    ss://method:percent-encoded-password@host:port#tag     (plain userinfo, also SIP002)

Also read: the older whole-base64 form ``ss://base64(method:password@host:port)#tag`` that
many subscriptions still carry. A ``plugin`` (simple-obfs, v2ray-plugin...) runs as a
separate program that v2sync does not start: refused by name. Other query fields are
ignored, as SIP002 asks ("unsupported-arguments=should-be-ignored").
"""
from __future__ import annotations

from typing import Tuple
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from v2sync.common.errors import ConfigError
from v2sync.infra.share import base64text
from v2sync.infra.share.model import SHADOWSOCKS, SS_METHODS, ShareLink, check, fail

SCHEME = "ss://"


def parse(text: str) -> ShareLink:
    body, _, tag = text[len(SCHEME):].partition("#")
    body, _, query = body.partition("?")
    if "@" not in body:  # the legacy form: everything before the tag is base64
        body = _decode(body.rstrip("/"), "base64").decode("utf-8", "replace")
    userinfo, _, hostport = body.rpartition("@")
    method, password = _credentials(userinfo)
    try:
        parts = urlsplit("http://" + hostport)
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise fail("address", f"the host or port is malformed: {e}"[:200]) from None
    if port is None:
        raise fail("port", "is missing", "expected ss://userinfo@host:port")
    if parts.path not in ("", "/"):
        raise fail("path", f"{parts.path[:50]!r} after the port is not part of SIP002")
    fields = dict(parse_qsl(query, keep_blank_values=True))
    if fields.get("plugin"):
        name = fields["plugin"].split(";")[0]
        raise fail("plugin", f"{name[:50]!r}: SIP003 plugins are not supported by v2sync",
                   "a link without plugin")
    link = ShareLink(protocol=SHADOWSOCKS, address=host or "", port=port, secret=password,
                     name=unquote(tag), method=SS_METHODS.get(method.lower(), method),
                     ignored=tuple(sorted(k for k in fields if k != "plugin")))
    return check(link)


# SIP002 clients know the ChaCha20 AEAD by its SIP004 name (shadowsocks-libev, Outline);
# 4.34 and v2rayN read both names.
LINK_METHOD_NAMES = {"chacha20-poly1305": "chacha20-ietf-poly1305"}


def dump(link: ShareLink) -> str:
    method = LINK_METHOD_NAMES.get(link.method, link.method)
    userinfo = base64text.encode_url_safe(f"{method}:{link.secret}".encode("utf-8"))
    host = f"[{link.address}]" if ":" in link.address else link.address
    name = f"#{quote(link.name, safe='')}" if link.name else ""
    return f"{SCHEME}{userinfo}@{host}:{link.port}{name}"


def _credentials(userinfo: str) -> Tuple[str, str]:
    if not userinfo:
        raise fail("userinfo", "is missing", "expected ss://userinfo@host:port")
    if ":" in userinfo or "%3A" in userinfo.upper():
        plain = unquote(userinfo)  # SIP002's plain form: method and password percent-encoded
    else:
        plain = _decode(userinfo, "userinfo").decode("utf-8", "replace")
    method, colon, password = plain.partition(":")
    if not colon:
        raise fail("userinfo", "has no ':' between the method and the password",
                   "method:password")
    return method, password


def _decode(text: str, part: str) -> bytes:
    try:
        return base64text.decode(unquote(text), part)
    except ConfigError:
        raise fail(part, "is neither base64 nor method:password",
                   "websafe-base64(method:password)") from None
