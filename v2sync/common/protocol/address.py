"""The (address, port) field of SOCKS5, Trojan, Shadowsocks, VMess, VLESS and Mux.cool.

v2ray ``common/protocol/address.go``: one parser, configured per protocol by the byte that
marks each address family and by whether the port comes before or after the address.

- ``SOCKS``: ``atyp | addr | port``, atyp 1 = IPv4, 3 = domain, 4 = IPv6 (RFC 1928 §5);
  SOCKS5, Trojan and Shadowsocks.
- ``PORT_FIRST``: ``port | atyp | addr``, atyp 1 = IPv4, 2 = domain, 3 = IPv6;
  VMess, VLESS and Mux.cool.

A domain is one length byte then 1..255 bytes. As address.go's ``maybeIPPrefix`` does, a
domain that spells an IP literal is read as that IP; any other domain must use the v2ray
domain charset.
"""
from __future__ import annotations

import struct
from typing import Optional, Tuple

from v2sync.common.cursor import Cursor
from v2sync.common.errors import LocalProtocolError, RemoteProtocolError
from v2sync.common.net import MAX_DOMAIN_LENGTH, Address, AddressKind, go_address

_PORT = struct.Struct("!H")
_IP_SIZE = {AddressKind.IPV4: 4, AddressKind.IPV6: 16}
DOMAIN_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
_MAYBE_IP_PREFIX = frozenset(b"[0123456789")


def check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"port {port} out of range")


def domain_address(raw: bytes, reply: Optional[bytes] = None) -> Address:
    """A wire domain as v2ray ``readAddress`` classifies it: IP literals become IPs, anything
    else must use the domain charset. Empty is garbage (v2ray would index past the end)."""
    if not raw:
        raise RemoteProtocolError("empty domain name", reply=reply)
    if raw[0] in _MAYBE_IP_PREFIX:
        parsed = go_address(raw.decode("ascii", "replace"))  # "8.8.8.8 " is that IP
        if parsed.is_ip:
            return parsed
    if not DOMAIN_BYTES.issuperset(raw):
        raise RemoteProtocolError(f"invalid domain name {raw!r}", reply=reply)
    return Address(raw.decode("ascii"), AddressKind.DOMAIN)


def encode_domain(name: str) -> bytes:
    """Length byte and name; a name that cannot be sent is our own caller's error."""
    raw = name.encode("utf-8", "surrogateescape")  # Go sends the name's bytes as they are
    if not 1 <= len(raw) <= MAX_DOMAIN_LENGTH:
        raise LocalProtocolError(f"domain length {len(raw)} not in 1..{MAX_DOMAIN_LENGTH}")
    return bytes([len(raw)]) + raw


class AddressLayout:
    """One protocol's layout of the (address, port) field."""

    def __init__(self, name: str, ipv4: int, domain: int, ipv6: int, port_first: bool):
        self.name = name
        self.port_first = port_first
        self._to_byte = {AddressKind.IPV4: ipv4, AddressKind.DOMAIN: domain,
                         AddressKind.IPV6: ipv6}
        self._to_kind = {byte: kind for kind, byte in self._to_byte.items()}

    def encode(self, address: Address, port: int) -> bytes:
        check_port(port)
        kind = address.kind
        body = address.packed() if kind in _IP_SIZE else encode_domain(address.value)
        field = bytes([self._to_byte[kind]]) + body
        port_bytes = _PORT.pack(port)
        return port_bytes + field if self.port_first else field + port_bytes

    def read(self, cur: Cursor, bad_type: Optional[bytes] = None,
             bad_address: Optional[bytes] = None) -> Tuple[Address, int]:
        """Reads one field; ``bad_type``/``bad_address`` ride on the error as the reply
        the protocol sends back (SOCKS does; the others close). Raises ``NeedMore`` when
        the cursor ends first, as every cursor read does."""
        port = cur.u16() if self.port_first else -1
        address = self.read_address(cur, bad_type, bad_address)
        return address, (port if self.port_first else cur.u16())

    def read_address(self, cur: Cursor, bad_type: Optional[bytes] = None,
                     bad_address: Optional[bytes] = None) -> Address:
        byte = cur.u8()
        kind = self._to_kind.get(byte)
        if kind is None:
            raise RemoteProtocolError(f"{self.name}: unknown address type {byte}", reply=bad_type)
        if kind in _IP_SIZE:
            return Address.from_packed(cur.take(_IP_SIZE[kind]))
        return domain_address(cur.take(cur.u8()), reply=bad_address)


SOCKS = AddressLayout("socks", ipv4=0x01, domain=0x03, ipv6=0x04, port_first=False)
PORT_FIRST = AddressLayout("vmess", ipv4=0x01, domain=0x02, ipv6=0x03, port_first=True)
