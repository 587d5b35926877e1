"""Addresses and destinations (v2ray ``common/net/address.go``, ``destination.go``).

An ``Address`` is an IPv4 address, an IPv6 address or a domain name; a ``Destination`` adds a
port and a network. Both are frozen so they can be shared between threads and used as keys.
"""
from __future__ import annotations

import enum
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from v2sync.common.errors import ConfigError

MAX_DOMAIN_LENGTH = 255


class Network(enum.Enum):
    TCP = "tcp"
    UDP = "udp"

    # Members are singletons compared by identity, so they may hash by identity: in C,
    # where Enum's hash is a Python call. Destinations key the UDP tables, hashed for
    # every datagram (0.67 -> 0.42 µs for a pair of them).
    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.value


class AddressKind(enum.Enum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DOMAIN = "domain"

    __hash__ = object.__hash__  # as Network's


@dataclass(frozen=True)
class Address:
    """A host: ``value`` is the canonical text form (IPv6 without brackets)."""

    value: str
    kind: AddressKind

    @classmethod
    def parse(cls, text: str) -> "Address":
        """Classify ``text``; brackets around an IPv6 literal are accepted and dropped."""
        host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        # Fast paths: every connection parses its peer's address, and ipaddress costs ~20 µs
        # where inet_pton costs ~1. inet_pton takes exactly what IPv4Address takes (dotted
        # quad, no leading zeros), and a name without ':' cannot be IPv6.
        if _is_ipv4(host):
            return cls(host, AddressKind.IPV4)
        if ":" not in host or "%" in host:  # Go's ParseIP takes no zone: "::1%lo" is a name
            return cls(text, AddressKind.DOMAIN)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return cls(text, AddressKind.DOMAIN)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # v2ray treats ::ffff:a.b.c.d as the IPv4 address
        kind = AddressKind.IPV4 if ip.version == 4 else AddressKind.IPV6
        return cls(str(ip), kind)

    @classmethod
    def from_packed(cls, raw: bytes) -> "Address":
        if len(raw) == 4:
            return cls(socket.inet_ntop(socket.AF_INET, raw), AddressKind.IPV4)
        return cls.parse(str(ipaddress.ip_address(raw)))

    @property
    def is_ip(self) -> bool:
        return self.kind is not AddressKind.DOMAIN

    @property
    def is_domain(self) -> bool:
        return self.kind is AddressKind.DOMAIN

    def packed(self) -> bytes:
        """The 4 or 16 raw bytes of an IP address."""
        if not self.is_ip:
            raise ValueError(f"{self.value} is a domain, not an IP address")
        if self.kind is AddressKind.IPV4:
            return socket.inet_pton(socket.AF_INET, self.value)
        return ipaddress.ip_address(self.value).packed

    def ip(self) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address]:
        return ipaddress.ip_address(self.value)

    def __str__(self) -> str:
        return self.value


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
        return True
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return False


ANY_IPV4 = Address("0.0.0.0", AddressKind.IPV4)
ANY_IPV6 = Address("::", AddressKind.IPV6)
LOCALHOST = Address("127.0.0.1", AddressKind.IPV4)


@dataclass(frozen=True)
class Destination:
    """Where a connection goes: ``tcp:example.com:443`` as v2ray prints it."""

    address: Address
    port: int
    network: Network = Network.TCP

    @classmethod
    def tcp(cls, host: str, port: int) -> "Destination":
        return cls(Address.parse(host), port, Network.TCP)

    @classmethod
    def udp(cls, host: str, port: int) -> "Destination":
        return cls(Address.parse(host), port, Network.UDP)

    def host_port(self) -> str:
        """``host:port`` with IPv6 in brackets, as in URLs and v2ray logs."""
        host = f"[{self.address}]" if self.address.kind is AddressKind.IPV6 else str(self.address)
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.network}:{self.host_port()}"


def go_address(text: str) -> Address:
    """An address as Go's ``net.ParseAddress`` reads it, as 4.34 reads every address in
    its config and every sniffed name: brackets around it are dropped, then white space
    around it too when it starts or ends with anything but an ASCII letter or digit (so
    ``" 10.0.0.1"`` is that IP, not a name)."""
    if len(text) > 1 and text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    if text and not (_alnum(text[0]) and _alnum(text[-1])):
        text = text.strip(_GO_SPACE)
    if text.startswith("[") and text.endswith("]"):
        return Address(text, AddressKind.DOMAIN)  # Go drops one pair, before trimming
    return Address.parse(text)


# What Go's strings.TrimSpace trims (unicode.IsSpace): str.strip() would also take
# \x1c-\x1f, which Go keeps.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + \
    "\u2028\u2029\u202f\u205f\u3000"


def _alnum(char: str) -> bool:
    return char.isascii() and char.isalnum()


def parse_host_port(text: str, path: str = "") -> "tuple[str, int]":
    """Split ``host:port`` / ``[v6]:port``; a ConfigError names the problem."""
    parts = split_host_port(text)
    port = decimal(parts[1]) if parts is not None else None
    if parts is None or port is None or port > 65535:
        raise ConfigError(f"invalid host:port {text!r}", path=path, expected="host:port")
    return parts[0], port


def decimal(text: str) -> Optional[int]:
    """``text`` read as ASCII decimal digits, else None. (``str.isdigit`` also passes "²"
    and "٨٠", which ``int`` then refuses or reads as 80.)"""
    return int(text) if text.isascii() and text.isdigit() else None


def split_host_port(text: str) -> Optional[Tuple[str, str]]:
    """(host, port) as Go's ``net.SplitHostPort`` splits ``text``, brackets off an IPv6
    host; None where it refuses: no colon, a colon in an unbracketed host, a bracket out of
    place (anywhere after the first character, or a ``]`` after the host's). The port is
    not checked."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return None
    if text.startswith("["):
        close = text.find("]")
        if close + 1 != len(host):  # "]" must come just before the last colon
            return None
        host, start, end = text[1:close], 1, close + 1
    elif ":" in host:
        return None
    else:
        start = end = 0
    if "[" in text[start:] or "]" in text[end:]:
        return None
    return host, port


_GO_PREFIXES = ("0x", "0o", "0b")
_GO_UINT = re.compile(r"[0-9A-Za-z_]+\Z")


def go_parse_port(text: str) -> Optional[int]:
    """Go's ``strconv.ParseUint(text, 0, 16)``, as 4.34's ``ParseHost`` reads a port: a
    ``0x``, ``0o`` or ``0b`` prefix, or a leading ``0`` for octal, and underscores between
    digits (``"0135600"`` is 48000); None where Go fails."""
    if not _GO_UINT.match(text):
        return None
    prefix = text[:2].lower()
    if prefix not in _GO_PREFIXES and text[:1] == "0" and len(text) > 1:
        text = "0o" + text[1:]  # Go's leading-zero octal; Python's int() refuses it
    try:
        value = int(text, 0)  # the same prefixes and underscore rules as Go's base 0
    except ValueError:
        return None
    return value if value <= 0xFFFF else None
