"""Datagrams carried in a byte stream: VLESS and Trojan UDP (v2ray
``proxy/vless/encoding/addons.go`` length packets, ``proxy/trojan/protocol.go`` packets).

Both frame each datagram as a header then its payload; only the header differs:

- VLESS: ``len u16 BE | payload`` (the target is fixed by the request header);
- Trojan: ``atyp addr port | len u16 BE | CRLF | payload`` (each packet names its target).

``PacketStream`` is the one incremental reader: it buffers what the stream delivered and
hands out whole packets, with the protocol's frame parser as a parameter. Parsers follow the
codec contract of ``common.cursor``. Nothing here touches a socket.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable, Generic, List, Optional, Tuple, TypeVar

from v2sync.common.cursor import Cursor, NeedMore
from v2sync.common.errors import LocalProtocolError, RemoteProtocolError
from v2sync.common.net import Destination, Network
from v2sync.common.protocol.address import SOCKS

T = TypeVar("T")
Parser = Callable[[Any], Optional[Tuple[T, int]]]  # bytes or a memoryview of them

_LEN = struct.Struct("!H")
CRLF = b"\r\n"
MAX_LENGTH_PACKET = 0xFFFF
# trojan/protocol.go maxLength: the reader refuses more, the writer splits at it.
TROJAN_MAX_PAYLOAD = 8192


# -- VLESS: len | payload ---------------------------------------------------------------

def encode_length_packet(payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH_PACKET:
        raise LocalProtocolError(f"datagram of {len(payload)} bytes: more than a u16 length")
    return _LEN.pack(len(payload)) + payload


def parse_length_packet(buf: bytes) -> Optional[Tuple[bytes, int]]:
    cur = Cursor(buf)
    try:
        payload = cur.take(cur.u16())
    except NeedMore:
        return None
    return payload, cur.pos


# -- Trojan: atyp addr port | len | CRLF | payload --------------------------------------

@dataclass(frozen=True)
class AddressedPacket:
    target: Destination
    payload: bytes


def encode_trojan_packets(target: Destination, payload: bytes) -> bytes:
    """One datagram as Trojan frames; like 4.34's PacketWriter, a datagram over 8192 bytes
    becomes several frames to the same target."""
    head = SOCKS.encode(target.address, target.port)
    pieces = [payload[i:i + TROJAN_MAX_PAYLOAD]
              for i in range(0, len(payload), TROJAN_MAX_PAYLOAD)] or [b""]
    return b"".join(head + _LEN.pack(len(piece)) + CRLF + piece for piece in pieces)


def parse_trojan_packet(buf: bytes) -> Optional[Tuple[AddressedPacket, int]]:
    cur = Cursor(buf)
    try:
        address, port = SOCKS.read(cur)
        length = cur.u16()
        if length > TROJAN_MAX_PAYLOAD:
            raise RemoteProtocolError(f"trojan: oversize packet ({length} bytes)")
        cur.take(2)  # 4.34 reads the CRLF without checking it
        payload = cur.take(length)
    except NeedMore:
        return None
    return AddressedPacket(Destination(address, port, Network.UDP), payload), cur.pos


# -- the shared reader ------------------------------------------------------------------

class PacketStream(Generic[T]):
    """Feed stream bytes, take whole packets. Holds at most one partial frame."""

    __slots__ = ("_parse", "_buf")

    def __init__(self, parse: Parser):
        self._parse = parse
        self._buf = b""

    def feed(self, data: bytes) -> List[T]:
        buf = self._buf + data if self._buf else bytes(data)
        packets: List[T] = []
        view = memoryview(buf)
        start = 0
        while start < len(buf):
            parsed = self._parse(view[start:])
            if parsed is None:
                break
            packet, used = parsed
            packets.append(packet)
            start += used
        self._buf = buf[start:]
        return packets

    @property
    def partial(self) -> bool:
        """A frame was cut short: at EOF the stream was truncated."""
        return bool(self._buf)
