"""gRPC message framing (gRPC over HTTP/2, "Length-Prefixed-Message"): a pure codec.

Each message is a 1-byte compressed flag, a 4-byte big-endian length and the payload. v2sync
neither asks for nor accepts compression (it advertises no ``grpc-accept-encoding``), so a
set flag is a protocol error, as is a length over the receive limit (grpc-go's default
4 MiB, what 4.34 accepts).
"""
from __future__ import annotations

import struct
from typing import Optional, Tuple
from urllib.parse import quote, unquote

from v2sync.common.errors import RemoteProtocolError

PREFIX = struct.Struct(">BI")
MAX_MESSAGE = 4 * 1024 * 1024
UNCOMPRESSED = 0


class MessageTooLarge(RemoteProtocolError):
    """A message's declared length is over the limit (gRPC RESOURCE_EXHAUSTED)."""


def encode_message(payload: bytes) -> bytes:
    return PREFIX.pack(UNCOMPRESSED, len(payload)) + payload


def decode_message(buf: bytes, limit: int = MAX_MESSAGE) -> Optional[Tuple[bytes, int]]:
    """``(payload, bytes used)``, or None when ``buf`` holds less than one message."""
    if len(buf) < PREFIX.size:
        return None
    flag, length = PREFIX.unpack_from(buf)
    if flag != UNCOMPRESSED:
        raise RemoteProtocolError(f"grpc: compressed flag {flag} set, but no compression "
                                  "was negotiated")
    if length > limit:
        raise MessageTooLarge(f"grpc: received message larger than max ({length} vs. {limit})")
    end = PREFIX.size + length
    if len(buf) < end:
        return None
    return bytes(buf[PREFIX.size:end]), end


# A status message's characters kept: a request's own text (an unknown stat name) can be
# megabytes, and hpack's pure-Python Huffman coding took a minute of CPU for 1 MB (4.34
# sends it whole, and the client refuses the header past its 16 KiB limit).
MAX_STATUS_MESSAGE = 1024
CUT_MARK = "..."


def encode_status_message(text: str) -> str:
    """``grpc-message`` is percent-encoded UTF-8 (the spec: printable ASCII but '%' as is).
    A space at either end is encoded too: h2 strips a header value's surrounding spaces,
    and 4.34's texts can end in one (``handler not found: `` for an empty tag). A text
    over ``MAX_STATUS_MESSAGE`` characters is cut there, marked with ``CUT_MARK``."""
    if len(text) > MAX_STATUS_MESSAGE:
        text = text[:MAX_STATUS_MESSAGE - len(CUT_MARK)] + CUT_MARK
    encoded = quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
    body = encoded.strip(" ")
    lead = len(encoded) - len(encoded.lstrip(" "))
    tail = len(encoded) - len(body) - lead
    return "%20" * lead + body + "%20" * tail


def decode_status_message(text: str) -> str:
    return unquote(text, errors="replace")
