"""The VLESS header codec (v2ray ``proxy/vless/encoding/encoding.go``, ``addons.go``).

Request:  ``ver 0 | uuid 16 | addons_len | addons | cmd | port | atyp | addr``
(no port and address for Mux, whose target is ``v1.mux.cool``). Response: ``ver | addons_len
| addons``. 4.34 always writes no addons (length 0); addons it receives are a protobuf
``Addons{Flow, Seed}`` that it decodes and then ignores, so here they are skipped unread.
Body: the raw stream, or for UDP one ``len | packet`` frame per datagram
(``common.protocol.packets``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from v2sync.common.cursor import Cursor, NeedMore
from v2sync.common.errors import RemoteProtocolError
from v2sync.common.mux.encoding import MUX_COOL_ADDRESS
from v2sync.common.net import Address, Destination, Network
from v2sync.common.protocol.address import PORT_FIRST
from v2sync.common.protocol.command import Command

VERSION = 0
UUID_SIZE = 16
# Enough to decide "not VLESS or not a user" (inbound.go: firstLen < 18 falls back).
PROBE_SIZE = 1 + UUID_SIZE + 1
# encoding.go: a Mux request's destination is v1.mux.cool with port 0.
MUX_DESTINATION = Destination(MUX_COOL_ADDRESS, 0)
NO_ADDONS = b"\x00"


@dataclass(frozen=True)
class RequestHeader:
    user_id: bytes
    command: Command
    address: Address
    port: int

    def destination(self) -> Destination:
        if self.command == Command.MUX:
            return MUX_DESTINATION
        network = Network.UDP if self.command == Command.UDP else Network.TCP
        return Destination(self.address, self.port, network)


def encode_request_header(header: RequestHeader) -> bytes:
    out = bytes([VERSION]) + header.user_id + NO_ADDONS + bytes([header.command])
    if header.command != Command.MUX:
        out += PORT_FIRST.encode(header.address, header.port)
    return out


def peek_user(buf: bytes) -> Optional[bytes]:
    """The UUID of a version-0 request once 17 bytes are here; None: need more.
    Raises for another version (the inbound's fallback decision, encoding.go)."""
    if len(buf) < 1 + UUID_SIZE:
        if buf and buf[0] != VERSION:
            raise RemoteProtocolError(f"vless: invalid request version {buf[0]}")
        return None
    if buf[0] != VERSION:
        raise RemoteProtocolError(f"vless: invalid request version {buf[0]}")
    return bytes(buf[1:1 + UUID_SIZE])


def parse_request_header(buf: bytes) -> Optional[Tuple[RequestHeader, int]]:
    """The whole request header; the user is not checked here (see ``peek_user``)."""
    cur = Cursor(buf)
    try:
        version = cur.u8()
        if version != VERSION:
            raise RemoteProtocolError(f"vless: invalid request version {version}")
        user_id = cur.take(UUID_SIZE)
        cur.take(cur.u8())  # addons: Flow and Seed, unused without XTLS (addons.go)
        raw_command = cur.u8()
        if raw_command == Command.MUX:
            return RequestHeader(user_id, Command.MUX, MUX_DESTINATION.address, 0), cur.pos
        if raw_command not in (Command.TCP, Command.UDP):
            raise RemoteProtocolError(f"vless: invalid request command {raw_command}")
        address, port = PORT_FIRST.read(cur)
    except NeedMore:
        return None
    return RequestHeader(user_id, Command(raw_command), address, port), cur.pos


def encode_response_header() -> bytes:
    return bytes([VERSION]) + NO_ADDONS


def parse_response_header(buf: bytes) -> Optional[Tuple[bytes, int]]:
    """The response's addons (4.34 sends none: b"")."""
    cur = Cursor(buf)
    try:
        version = cur.u8()
        if version != VERSION:
            raise RemoteProtocolError(f"vless: unexpected response version {version}")
        addons = cur.take(cur.u8())
    except NeedMore:
        return None
    return addons, cur.pos
