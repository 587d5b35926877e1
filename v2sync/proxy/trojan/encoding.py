"""The Trojan header codec (v2ray ``proxy/trojan/protocol.go``).

Request: ``hex(SHA224(password)) (56 ASCII bytes) | CRLF | cmd | atyp addr port | CRLF``,
cmd 1 = TCP, 3 = UDP (4.34 treats any other value as TCP). There is no response header.
UDP packets are framed by ``common.protocol.packets``.
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Optional, Tuple

from v2sync.common.cursor import Cursor, NeedMore
from v2sync.common.errors import RemoteProtocolError
from v2sync.common.net import Address, Destination, Network
from v2sync.common.protocol.address import SOCKS

KEY_SIZE = 56
CRLF = b"\r\n"
# server.go: fewer bytes than this in the first read, or no CR at byte 56: not Trojan.
PROBE_SIZE = KEY_SIZE + len(CRLF)


class Command(enum.IntEnum):
    TCP = 1
    UDP = 3


def password_key(password: str) -> bytes:
    """The 56 ASCII hex digits that stand for a password on the wire."""
    return hashlib.sha224(password.encode("utf-8")).hexdigest().encode("ascii")


@dataclass(frozen=True)
class RequestHeader:
    key: bytes
    command: Command
    address: Address
    port: int

    def destination(self) -> Destination:
        network = Network.UDP if self.command == Command.UDP else Network.TCP
        return Destination(self.address, self.port, network)


def encode_request_header(header: RequestHeader) -> bytes:
    return (header.key + CRLF + bytes([header.command])
            + SOCKS.encode(header.address, header.port) + CRLF)


def peek_key(buf: bytes) -> Optional[bytes]:
    """The user key once 58 bytes are here (None: need more); raises when the bytes
    cannot be Trojan (no CR after the key), the inbound's fallback decision."""
    if len(buf) < PROBE_SIZE:
        return None
    if buf[KEY_SIZE] != CRLF[0]:
        raise RemoteProtocolError("trojan: not trojan protocol")
    return bytes(buf[:KEY_SIZE])


def parse_request_header(buf: bytes) -> Optional[Tuple[RequestHeader, int]]:
    cur = Cursor(buf)
    try:
        key = cur.take(KEY_SIZE)
        cur.take(2)  # 4.34 reads both CRLFs without checking them (ParseHeader)
        raw_command = cur.u8()
        address, port = SOCKS.read(cur)
        cur.take(2)
    except NeedMore:
        return None
    command = Command.UDP if raw_command == Command.UDP else Command.TCP
    return RequestHeader(key, command, address, port), cur.pos
