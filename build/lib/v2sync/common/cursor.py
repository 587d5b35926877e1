"""A bounded reader over a byte buffer, for incremental codecs (dnspython ``wire.Parser``).

The codec contract used by every ``proxy/<p>/encoding.py``::

    def parse_thing(buf: bytes) -> Optional[Tuple[Thing, int]]:
        cur = Cursor(buf)
        try:
            ...read fields with cur.u8(), cur.take(n)...
        except NeedMore:
            return None            # incomplete: call again with more bytes
        return Thing(...), cur.pos # consumed exactly one frame; the rest is the caller's

Garbage raises ``RemoteProtocolError``. ``NeedMore`` never escapes a codec.
"""
from __future__ import annotations

import struct
from typing import Optional

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class NeedMore(Exception):
    """Internal signal: the buffer ends before the frame does."""


class Cursor:
    """Reads forward from ``pos``; never past ``end`` (refuses over-reads)."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int = 0, end: Optional[int] = None):
        self.buf = memoryview(buf) if not isinstance(buf, memoryview) else buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("negative length")
        if self.pos + n > self.end:
            raise NeedMore
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def u8(self) -> int:
        if self.pos >= self.end:
            raise NeedMore
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        return _U16.unpack(self.take(2))[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def u64(self) -> int:
        return _U64.unpack(self.take(8))[0]

    def find(self, needle: bytes, limit: int) -> int:
        """Absolute index of ``needle`` within the next ``limit`` bytes, or -1."""
        stop = min(self.end, self.pos + limit + len(needle))
        hit = bytes(self.buf[self.pos:stop]).find(needle)
        return -1 if hit < 0 else self.pos + hit
