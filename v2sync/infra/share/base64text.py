"""Base64 as share links and subscriptions use it: standard or URL-safe alphabet, padded or
not, lines wrapped or not (v2rayN writes standard padded base64; SIP002 URL-safe unpadded)."""
from __future__ import annotations

import base64
import binascii
import re

from v2sync.common.errors import ConfigError

_URL_SAFE = str.maketrans("-_", "+/")
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/\-_]*={0,2}$")
_WHITESPACE = re.compile(r"\s+")


def decode(text: str, part: str) -> bytes:
    """The bytes ``text`` encodes; ConfigError at ``part`` if it is not base64."""
    compact = _WHITESPACE.sub("", text)
    if not compact or not _BASE64_CHARS.match(compact):
        raise ConfigError("is not base64", part, expected="standard or URL-safe base64")
    body = compact.rstrip("=").translate(_URL_SAFE)
    if len(body) % 4 == 1:
        raise ConfigError("is truncated base64 (a stray character at the end)", part)
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ConfigError(f"is not base64: {e}", part) from None


def looks_like(text: str) -> bool:
    return bool(text) and bool(_BASE64_CHARS.match(_WHITESPACE.sub("", text)))


def encode_standard(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_url_safe(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
