"""A link as a QR code drawn in the terminal (``segno``, pure Python, imported only here)."""
from __future__ import annotations

from typing import TextIO

from v2sync.common.errors import ConfigError


def draw(text: str, out: TextIO) -> None:
    try:
        import segno
    except ImportError:
        raise ConfigError("needs the segno package", "--qr",
                          expected="pip install segno, or v2sync[qr]") from None
    # Half-block characters: two modules a character cell, so a VMess link fits a terminal.
    segno.make(text, error="l").terminal(out=out, compact=True)
