"""v2rayN's ``vmess://`` link: base64 of a JSON object, version 2.

The fields (v2rayN wiki "分享链接格式说明(ver 2)", and ``VmessQRCode`` in v2rayN's
``ServiceLib/Models``): ``v`` (2), ``ps`` (name), ``add``, ``port``, ``id``, ``aid``,
``scy`` (body security, default auto), ``net`` (tcp, kcp, ws, h2, quic, grpc), ``type``
(the TCP or mKCP header), ``host`` and ``path`` (WebSocket / HTTP header), ``tls`` ("tls"
or empty), ``sni``, ``alpn`` (comma-separated). Numbers may be JSON numbers or strings.
v2rayN writes standard, padded base64 of the JSON; others write URL-safe or unpadded.
Its reader (``ServiceLib/Handler/Fmt/VmessFmt.cs``, ``ResolveVmess``) ignores ``v``; so does
this one when ``v`` is missing, but a version other than 2 (whose fields meant other
things) is refused. v2rayN also writes ``fp`` and ``insecure``: reported as ignored.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping

from v2sync.common.net import decimal
from v2sync.infra.share import base64text
from v2sync.infra.share.model import NETWORK_ALIASES, VMESS, ShareLink, check, fail

SCHEME = "vmess://"
VERSION = "2"
# Read from a link and used; anything else in the object is reported as ignored.
KNOWN_KEYS = ("v", "ps", "add", "port", "id", "aid", "scy", "net", "type", "host", "path",
              "tls", "sni", "alpn")


def parse(text: str) -> ShareLink:
    """A ShareLink from ``vmess://<base64 JSON>``; ConfigError naming the bad field."""
    raw = base64text.decode(text[len(SCHEME):], "base64")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # 8 KiB of "[" nests deep
        raise fail("json", f"the decoded link is not JSON: {e}"[:200]) from None
    if not isinstance(obj, dict):
        raise fail("json", "the decoded link is not a JSON object")
    version = _string(obj, "v", VERSION)  # v2rayN reads a link without "v" as version 2
    if version != VERSION:
        raise fail("v", f"version {version!r} is not supported", "expected 2 (v2rayN's format)")
    network = _string(obj, "net", "tcp") or "tcp"
    network = NETWORK_ALIASES.get(network, network)
    link = ShareLink(
        protocol=VMESS, address=_string(obj, "add", ""), port=_number(obj, "port", None),
        secret=_string(obj, "id", ""), name=_string(obj, "ps", ""),
        method=_string(obj, "scy", "auto") or "auto", alter_id=_number(obj, "aid", 0),
        network=network, header_type=(_string(obj, "type", "none") or "none")
        if network == "tcp" else "none",
        host=_string(obj, "host", ""), path=_string(obj, "path", ""),
        security=_string(obj, "tls", "none") or "none", sni=_string(obj, "sni", ""),
        alpn=_alpn(_string(obj, "alpn", "")),
        ignored=tuple(sorted(str(k)[:50] for k in obj if k not in KNOWN_KEYS)))
    return check(link)


def dump(link: ShareLink) -> str:
    """v2rayN's form: every value a string, standard padded base64."""
    obj: Dict[str, str] = {
        "v": VERSION, "ps": link.name, "add": link.address, "port": str(link.port),
        "id": link.secret, "aid": str(link.alter_id), "scy": link.method or "auto",
        "net": link.network, "type": link.header_type if link.network == "tcp" else "none",
        "host": link.host, "path": link.path, "tls": "tls" if link.security == "tls" else "",
        "sni": link.sni, "alpn": ",".join(link.alpn),
    }
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return SCHEME + base64text.encode_standard(text.encode("utf-8"))


def _string(obj: Mapping[str, Any], key: str, default: str) -> str:
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise fail(key, f"is a {type(value).__name__}", "expected a string")
    return str(value)


def _number(obj: Mapping[str, Any], key: str, default: Any) -> int:
    value = obj.get(key, default)
    if value is None or value == "":
        if default is None:
            raise fail(key, "is missing")
        return int(default)
    if isinstance(value, bool):
        raise fail(key, "is a boolean", "expected a number or a string of digits")
    if isinstance(value, int):
        return value
    number = decimal(value.strip()) if isinstance(value, str) and len(value) <= 10 else None
    if number is not None:
        return number
    raise fail(key, f"{str(value)[:50]!r} is not a number", "expected a number or a string of digits")


def _alpn(text: str) -> tuple:
    protocols: List[str] = [p.strip() for p in text.split(",") if p.strip()]
    return tuple(protocols)

