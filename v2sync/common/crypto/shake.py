"""SHAKE128 read as an endless stream (v2ray ``proxy/vmess/encoding/auth.go`` ShakeSizeParser).

``hashlib.shake_128`` can only recompute a prefix, so the XOF is kept open with pycryptodome
and read in batches: VMess draws 2 bytes per chunk and a call per draw would dominate.
"""
from __future__ import annotations

import struct
from typing import Iterator

from Crypto.Hash import SHAKE128

SHAKE_BATCH = 512  # bytes per XOF read: 256 two-byte draws
_WORDS = struct.Struct(f"!{SHAKE_BATCH // 2}H")


class ShakeStream:
    """The SHAKE128 output stream for ``seed``, drawn two bytes at a time as VMess does.

    Each batch is unpacked into big-endian 16-bit words at once, so a draw is one
    ``next()`` on a tuple iterator (the 2 KiB chunks 4.34 sends take two draws each).
    """

    __slots__ = ("_xof", "_words")

    def __init__(self, seed: bytes):
        self._xof = SHAKE128.new(data=seed)
        self._words: Iterator[int] = iter(())

    def next_u16(self) -> int:
        """The next two bytes of the stream as a big-endian number."""
        word = next(self._words, None)
        if word is None:
            self._words = iter(_WORDS.unpack(self._xof.read(SHAKE_BATCH)))
            word = next(self._words)
        return word
