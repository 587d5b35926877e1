"""SHAKE128 read as an endless stream (v2ray ``proxy/vmess/encoding/auth.go`` ShakeSizeParser).

``hashlib.shake_128`` can only recompute a prefix, so the XOF is kept open with pycryptodome
and read in batches: VMess draws 2 bytes per chunk and a call per draw would dominate.
"""
from __future__ import annotations

import struct

from Crypto.Hash import SHAKE128

SHAKE_BATCH = 512
_U16 = struct.Struct("!H")


class ShakeStream:
    """The SHAKE128 output stream for ``seed``; ``read`` continues where the last one ended."""

    __slots__ = ("_xof", "_buf", "_pos")

    def __init__(self, seed: bytes):
        self._xof = SHAKE128.new(data=seed)
        self._buf = b""
        self._pos = 0

    def read(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf = self._buf[self._pos:] + self._xof.read(max(SHAKE_BATCH, n))
            self._pos = 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def next_u16(self) -> int:
        """The next two bytes as a big-endian number."""
        return _U16.unpack(self.read(2))[0]
