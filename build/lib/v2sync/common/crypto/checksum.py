"""Non-cryptographic checksums used by VMess (Go ``hash/fnv``, ``hash/crc32``, ``hash/crc64``)."""
from __future__ import annotations

import zlib
from typing import List

FNV32_OFFSET_BASIS = 0x811C9DC5
FNV32_PRIME = 0x01000193
# Go's crc64.ECMA polynomial in reversed (LSB-first) form, as crc64.MakeTable(crc64.ECMA) uses it.
CRC64_ECMA_REVERSED = 0xC96C5795D7870F42
_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF


def fnv1a32(data: bytes) -> int:
    """FNV-1a, 32-bit (Go ``fnv.New32a``)."""
    h, prime, mask = FNV32_OFFSET_BASIS, FNV32_PRIME, _MASK32  # locals: this loop is hot
    for byte in data:
        h = ((h ^ byte) * prime) & mask
    return h


def crc32_ieee(data: bytes) -> int:
    """CRC-32 with the IEEE polynomial (Go ``crc32.ChecksumIEEE``)."""
    return zlib.crc32(data) & _MASK32


def _crc64_table(poly: int) -> List[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC64_ECMA_TABLE = _crc64_table(CRC64_ECMA_REVERSED)


def crc64_ecma(data: bytes, crc: int = 0) -> int:
    """Go ``crc64.Update(crc, crc64.MakeTable(crc64.ECMA), data)``; ``crc=0`` gives CRC-64/XZ."""
    crc = ~crc & _MASK64
    table = _CRC64_ECMA_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return ~crc & _MASK64
