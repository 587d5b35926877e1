"""The request command VMess and VLESS carry (v2ray ``common/protocol/headers.go``
``RequestCommand``): one byte, the same values in both protocols."""
from __future__ import annotations

import enum


class Command(enum.IntEnum):
    TCP = 1
    UDP = 2
    MUX = 3  # Mux.cool: the destination is v1.mux.cool, carried by no address field
