"""SHAKE128 read as an endless stream (v2ray ``proxy/vmess/encoding/auth.go`` ShakeSizeParser).

``hashlib.shake_128`` can only recompute a prefix, so past its first batch the XOF is kept
open with pycryptodome and read in batches: VMess draws 2 bytes per chunk and a call per
draw would dominate. The first batch, all that a short connection ever draws, comes from
``hashlib`` in one C call: opening pycryptodome's XOF and reading it cost ~6 µs and ~25
Python calls a stream, against ~1.5 µs, and every VMess connection opens two per process.
"""
from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING, Optional, Tuple

if TYPE_CHECKING:
    from Crypto.Hash import SHAKE128

SHAKE_BATCH = 512  # bytes per XOF read: 256 two-byte draws
_U16 = struct.Struct("!H")
_U16_PAIR = struct.Struct("!HH")


class ShakeStream:
    """The SHAKE128 output stream for ``seed``, drawn two bytes at a time as VMess does.

    A draw reads its word straight out of the current batch (``unpack_from``, no slicing):
    the 2 KiB chunks 4.34 sends take two draws each. The batch stays ``bytes``, not a
    tuple of ints: every VMess connection keeps two of these per process while it idles.
    """

    __slots__ = ("_seed", "_xof", "_batch", "_pos")

    def __init__(self, seed: bytes):
        self._seed = seed
        self._xof: "Optional[SHAKE128.SHAKE128_XOF]" = None
        self._batch = b""
        self._pos = SHAKE_BATCH  # nothing read yet

    def _next_batch(self) -> bytes:
        if self._xof is not None:
            return self._xof.read(SHAKE_BATCH)
        if not self._batch:  # the first batch
            return hashlib.shake_128(self._seed).digest(SHAKE_BATCH)
        from Crypto.Hash import SHAKE128  # past the first batch only: ~25 ms less at start
        self._xof = SHAKE128.new(data=self._seed)
        self._xof.read(SHAKE_BATCH)  # the first batch, already drawn
        return self._xof.read(SHAKE_BATCH)

    def next_u16(self) -> int:
        """The next two bytes of the stream as a big-endian number."""
        pos = self._pos
        if pos >= SHAKE_BATCH:
            self._batch = self._next_batch()
            pos = 0
        self._pos = pos + 2
        return _U16.unpack_from(self._batch, pos)[0]

    def peek_u16(self) -> int:
        """The next draw, left in the stream: the next ``next_u16`` returns it again."""
        if self._pos >= SHAKE_BATCH:
            self._batch = self._next_batch()
            self._pos = 0
        return _U16.unpack_from(self._batch, self._pos)[0]

    def next_pair(self) -> Tuple[int, int]:
        """The next two draws at once (VMess with GlobalPadding draws a chunk's padding,
        then its length mask): one call and one unpack per chunk instead of two."""
        pos = self._pos
        if pos + 4 > SHAKE_BATCH:  # the pair straddles two batches (or none is read yet)
            return self.next_u16(), self.next_u16()
        self._pos = pos + 4
        return _U16_PAIR.unpack_from(self._batch, pos)
