"""The PROXY protocol, versions 1 (text) and 2 (binary), as a pure codec
(haproxy's ``proxy-protocol.txt``; v2ray 4.34 writes it in ``proxy/vless/inbound`` and
``proxy/trojan/server.go`` for fallbacks' ``xver``, and reads it with go-proxyproto for
``acceptProxyProtocol``).

``encode_v1``/``encode_v2`` describe a TCP connection by its two ends. ``parse_header``
reads either version under the codec contract (``None``: need more; ``RemoteProtocolError``:
not a PROXY header). A LOCAL (v2) or UNKNOWN (v1) header, or an address family other than
TCP over IPv4/IPv6, parses with ``source = None``: keep the connection's own address.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Tuple

from v2sync.common.cursor import Cursor, NeedMore
from v2sync.common.errors import LocalProtocolError, RemoteProtocolError
from v2sync.common.net import Address, AddressKind, Destination

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (spec §2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_VERSION = 0x20
V2_LOCAL, V2_PROXY = 0x00, 0x01
V2_TCP4, V2_TCP6 = 0x11, 0x21
_V2_FIXED = struct.Struct("!BBH")
_V2_PORTS = struct.Struct("!HH")
_V2_ADDR_LEN = {V2_TCP4: 12, V2_TCP6: 36}


@dataclass(frozen=True)
class ProxyHeader:
    source: Optional[Destination]       # None: LOCAL / UNKNOWN, keep the real peer
    destination: Optional[Destination]


def _ipv4_of(address: Address) -> Optional[Address]:
    """``::ffff:a.b.c.d`` as IPv4 (a dual-stack listener's view of an IPv4 peer)."""
    if address.kind is AddressKind.IPV6 and address.value.lower().startswith("::ffff:") \
            and "." in address.value:
        return Address.parse(address.value[7:])
    return address if address.kind is AddressKind.IPV4 else None


def _same_family(source: Destination, dest: Destination
                 ) -> Tuple[bool, Address, Address]:
    """(is IPv4, source address, destination address) in one family, as the header needs."""
    for end in (source, dest):
        if not end.address.is_ip:
            raise LocalProtocolError(f"PROXY header needs IP addresses, not {end.address}")
    src4, dst4 = _ipv4_of(source.address), _ipv4_of(dest.address)
    if src4 is not None and dst4 is not None:
        return True, src4, dst4
    return False, _as_ipv6(source.address), _as_ipv6(dest.address)


def _as_ipv6(address: Address) -> Address:
    if address.kind is AddressKind.IPV4:  # Address.parse would fold it back to IPv4
        return Address("::ffff:" + address.value, AddressKind.IPV6)
    return address


def encode_v1(source: Destination, dest: Destination) -> bytes:
    ipv4, src, dst = _same_family(source, dest)
    family = "TCP4" if ipv4 else "TCP6"
    return (f"PROXY {family} {src.value} {dst.value} {source.port} {dest.port}\r\n"
            .encode("ascii"))


def encode_v2(source: Destination, dest: Destination) -> bytes:
    ipv4, src, dst = _same_family(source, dest)
    family = V2_TCP4 if ipv4 else V2_TCP6
    body = src.packed() + dst.packed() + _V2_PORTS.pack(source.port, dest.port)
    return V2_SIGNATURE + _V2_FIXED.pack(V2_VERSION | V2_PROXY, family, len(body)) + body


def encode(version: int, source: Destination, dest: Destination) -> bytes:
    if version == 1:
        return encode_v1(source, dest)
    if version == 2:
        return encode_v2(source, dest)
    raise LocalProtocolError(f"PROXY protocol version {version}: only 1 and 2 exist")


def parse_header(buf: bytes) -> Optional[Tuple[ProxyHeader, int]]:
    """A v1 or v2 header at the start of ``buf``."""
    if bytes(buf[:1]) == V2_SIGNATURE[:1]:
        signature = V2_SIGNATURE
        parse = _parse_v2
    else:
        signature = V1_PREFIX
        parse = _parse_v1
    head = bytes(buf[:len(signature)])
    if not signature.startswith(head):
        raise RemoteProtocolError("no PROXY protocol header")
    return parse(buf) if len(head) == len(signature) else None


def _parse_v1(buf: bytes) -> Optional[Tuple[ProxyHeader, int]]:
    end = bytes(buf[:V1_MAX]).find(b"\r\n")
    if end < 0:
        if len(buf) >= V1_MAX:
            raise RemoteProtocolError("PROXY v1 line longer than 107 bytes")
        return None
    fields = bytes(buf[len(V1_PREFIX):end]).split(b" ")
    if fields[0] == b"UNKNOWN":
        return ProxyHeader(None, None), end + 2
    if fields[0] not in (b"TCP4", b"TCP6") or len(fields) != 5:
        raise RemoteProtocolError(f"bad PROXY v1 line {bytes(buf[:end])!r}")
    want = AddressKind.IPV4 if fields[0] == b"TCP4" else AddressKind.IPV6
    src = _v1_end(fields[1], fields[3], want)
    dst = _v1_end(fields[2], fields[4], want)
    return ProxyHeader(src, dst), end + 2


def _v1_end(host: bytes, port: bytes, kind: AddressKind) -> Destination:
    address = Address.parse(host.decode("ascii", "replace"))
    if address.kind is not kind or not port.isdigit() or int(port) > 0xFFFF \
            or (len(port) > 1 and port.startswith(b"0")):
        raise RemoteProtocolError(f"bad PROXY v1 address {host!r} port {port!r}")
    return Destination(address, int(port))


def _parse_v2(buf: bytes) -> Optional[Tuple[ProxyHeader, int]]:
    cur = Cursor(buf, len(V2_SIGNATURE))
    try:
        version_command, family, length = _V2_FIXED.unpack(cur.take(_V2_FIXED.size))
        body = Cursor(cur.take(length))
    except NeedMore:
        return None
    if version_command >> 4 != V2_VERSION >> 4 or version_command & 0x0F > V2_PROXY:
        raise RemoteProtocolError(f"bad PROXY v2 version/command 0x{version_command:02x}")
    used = cur.pos
    if version_command & 0x0F == V2_LOCAL or family not in _V2_ADDR_LEN:
        return ProxyHeader(None, None), used  # LOCAL, UNSPEC, UDP or unix: the real peer
    if length < _V2_ADDR_LEN[family]:
        raise RemoteProtocolError(f"PROXY v2 address block of {length} bytes is too short")
    size = 4 if family == V2_TCP4 else 16
    src, dst = body.take(size), body.take(size)
    src_port, dst_port = _V2_PORTS.unpack(body.take(4))  # TLVs after this are skipped
    return (ProxyHeader(Destination(Address.from_packed(src), src_port),
                        Destination(Address.from_packed(dst), dst_port)), used)
