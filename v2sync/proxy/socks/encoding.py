"""SOCKS 4, 4a and 5 wire codec, pure and socket-free (v2ray ``proxy/socks/protocol.go``).

Server side: ``peek_version`` dispatches on the first byte, then SOCKS5 goes greeting ->
method selection -> (RFC 1929 password sub-negotiation) -> request -> reply, and SOCKS4/4a is a
single request -> reply. Client-side encoders and reply parsers are here too, for tests and
for a SOCKS outbound.

Every stream decoder follows the ``v2sync.common.cursor`` contract: ``None`` = need more bytes,
``RemoteProtocolError`` = garbage (``reply`` holds what the server should send before closing,
when the protocol defines one), else ``(frame, consumed)``. UDP datagrams (RFC 1928 §7) arrive
whole, so ``parse_udp_datagram`` returns the frame or raises, never ``None``.

Where v2ray and the RFCs differ we follow v2ray and say so at the spot; where v2ray would
crash or accept nonsense (an empty domain indexes ``domain[0]``) we reject.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

from v2sync.common.cursor import Cursor, NeedMore
from v2sync.common.errors import LocalProtocolError, RemoteProtocolError
from v2sync.common.net import ANY_IPV4, Address, AddressKind, Destination, Network
from v2sync.common.protocol.address import SOCKS, check_port

SOCKS4_VERSION = 0x04
SOCKS5_VERSION = 0x05
PASSWORD_AUTH_VERSION = 0x01  # RFC 1929 sub-negotiation version

METHOD_NO_AUTH = 0x00
METHOD_GSSAPI = 0x01
METHOD_PASSWORD = 0x02
METHOD_NO_ACCEPTABLE = 0xFF

AUTH_STATUS_SUCCESS = 0x00
AUTH_STATUS_FAILURE = 0xFF  # RFC 1929 says "any non-zero"; v2ray sends 0xFF

ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

SOCKS4_REPLY_VERSION = 0x00
SOCKS4_GRANTED = 0x5A
SOCKS4_REJECTED = 0x5B
SOCKS4_MAX_FIELD = 255  # what this side writes in a userid
# What a NUL-terminated userid or 4a domain may hold when read: 4.34's ReadUntilNull reads
# into one 2 KiB buffer and fails when it fills.
SOCKS4_MAX_READ = 2047

_PORT = struct.Struct("!H")
_IP_LENGTH = {ATYP_IPV4: 4, ATYP_IPV6: 16}


class Command(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03  # SOCKS5 only
    TOR_RESOLVE = 0xF0  # Tor extensions; v2ray treats both as CONNECT
    TOR_RESOLVE_PTR = 0xF1


SOCKS4_COMMANDS = frozenset({Command.CONNECT, Command.BIND})


class Reply(enum.IntEnum):
    """RFC 1928 §6 REP codes."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NET_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONN_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    CMD_NOT_SUPPORTED = 0x07
    ATYP_NOT_SUPPORTED = 0x08


@dataclass(frozen=True)
class Greeting:
    methods: Tuple[int, ...]

    def offers(self, method: int) -> bool:
        return method in self.methods


@dataclass(frozen=True)
class MethodSelection:
    method: int


@dataclass(frozen=True)
class PasswordAuth:
    """RFC 1929 credentials; bytes that are not UTF-8 survive as surrogate escapes."""

    username: str
    password: str


@dataclass(frozen=True)
class PasswordAuthReply:
    status: int

    @property
    def ok(self) -> bool:
        return self.status == AUTH_STATUS_SUCCESS


@dataclass(frozen=True)
class Socks5Request:
    command: Command
    address: Address
    port: int

    @property
    def destination(self) -> Destination:
        """For UDP ASSOCIATE this is where the client will send from, not a target."""
        network = Network.UDP if self.command is Command.UDP_ASSOCIATE else Network.TCP
        return Destination(self.address, self.port, network)


@dataclass(frozen=True)
class Socks5Reply:
    code: int  # a ``Reply`` value, kept as int: a server may send codes we do not name
    address: Address
    port: int

    @property
    def succeeded(self) -> bool:
        return self.code == Reply.SUCCEEDED


@dataclass(frozen=True)
class Socks4Request:
    command: Command
    address: Address  # a domain only for SOCKS4a
    port: int
    userid: str

    @property
    def destination(self) -> Destination:
        return Destination(self.address, self.port, Network.TCP)


@dataclass(frozen=True)
class Socks4Reply:
    granted: bool
    port: int
    address: Address


@dataclass(frozen=True)
class UdpDatagram:
    frag: int
    address: Address
    port: int
    payload: bytes


# -- shared pieces ----------------------------------------------------------------------------

def peek_version(buf: bytes) -> Optional[int]:
    """SOCKS version from the first byte (4 or 5); None if empty; garbage otherwise.

    v2ray ``Handshake`` closes without a reply on an unknown version."""
    if not buf:
        return None
    if buf[0] not in (SOCKS4_VERSION, SOCKS5_VERSION):
        raise RemoteProtocolError(f"unknown SOCKS version {buf[0]}")
    return buf[0]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def read_address_port(cur: Cursor, bad_atyp: Optional[bytes] = None,
                      bad_addr: Optional[bytes] = None) -> Tuple[Address, int]:
    """ATYP, address, port (RFC 1928 §5). ``bad_atyp``/``bad_addr`` become the error reply."""
    return SOCKS.read(cur, bad_atyp, bad_addr)


def encode_address_port(address: Address, port: int) -> bytes:
    """ATYP, address, port; a domain must be 1..255 bytes."""
    return SOCKS.encode(address, port)


def _expect_version(got: int, want: int, what: str, reply: Optional[bytes] = None) -> None:
    if got != want:
        raise RemoteProtocolError(f"{what}: version {got}, expected {want}", reply=reply)


# -- SOCKS5 method negotiation ----------------------------------------------------------------

def parse_greeting(buf: bytes) -> Optional[Tuple[Greeting, int]]:
    """VER NMETHODS METHODS. Zero methods parses; the server then answers NO_ACCEPTABLE."""
    cur = Cursor(buf)
    try:
        _expect_version(cur.u8(), SOCKS5_VERSION, "greeting")
        methods = tuple(cur.take(cur.u8()))
    except NeedMore:
        return None
    return Greeting(methods), cur.pos


def encode_greeting(methods: Iterable[int]) -> bytes:
    listed = bytes(methods)
    if not 1 <= len(listed) <= 255:
        raise LocalProtocolError("a greeting offers 1..255 methods")
    return bytes([SOCKS5_VERSION, len(listed)]) + listed


def encode_method_selection(method: int) -> bytes:
    """The server's choice; ``METHOD_NO_ACCEPTABLE`` gives 05 FF, then the server closes."""
    return bytes([SOCKS5_VERSION, method])


def parse_method_selection(buf: bytes) -> Optional[Tuple[MethodSelection, int]]:
    cur = Cursor(buf)
    try:
        _expect_version(cur.u8(), SOCKS5_VERSION, "method selection")
        method = cur.u8()
    except NeedMore:
        return None
    return MethodSelection(method), cur.pos


# -- RFC 1929 username/password ---------------------------------------------------------------

def parse_password_auth(buf: bytes) -> Optional[Tuple[PasswordAuth, int]]:
    """VER(1) ULEN UNAME PLEN PASSWD. Empty fields parse, as in v2ray
    ``ReadUsernamePassword``; they then fail the account check."""
    cur = Cursor(buf)
    try:
        cur.u8()  # the version: 4.34's ReadUsernamePassword does not look at it
        username = cur.take(cur.u8())
        password = cur.take(cur.u8())
    except NeedMore:
        return None
    return PasswordAuth(_text(username), _text(password)), cur.pos


def encode_password_auth(username: str, password: str) -> bytes:
    user, secret = _raw(username), _raw(password)
    if len(user) > 255 or len(secret) > 255:
        raise LocalProtocolError("RFC 1929 username and password are at most 255 bytes")
    return bytes([PASSWORD_AUTH_VERSION, len(user)]) + user + bytes([len(secret)]) + secret


def encode_password_auth_reply(ok: bool) -> bytes:
    return bytes([PASSWORD_AUTH_VERSION, AUTH_STATUS_SUCCESS if ok else AUTH_STATUS_FAILURE])


def parse_password_auth_reply(buf: bytes) -> Optional[Tuple[PasswordAuthReply, int]]:
    """VER STATUS. The version is not looked at, as 4.34's ``ClientHandshake`` reads only
    the status: some servers answer RFC 1929 with version 5."""
    cur = Cursor(buf)
    try:
        cur.u8()
        status = cur.u8()
    except NeedMore:
        return None
    return PasswordAuthReply(status), cur.pos


# -- SOCKS5 request and reply -----------------------------------------------------------------

def encode_reply(code: int, address: Address = ANY_IPV4, port: int = 0) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT. v2ray refusals use 0.0.0.0:0."""
    return bytes([SOCKS5_VERSION, code, 0x00]) + encode_address_port(address, port)




def parse_request(buf: bytes) -> Optional[Tuple[Socks5Request, int]]:
    """VER CMD RSV ATYP DST.ADDR DST.PORT.

    Returns every command the protocol defines; refusing BIND, or UDP when disabled, is the
    inbound's job (``encode_reply(Reply.CMD_NOT_SUPPORTED)``). An unknown command fails as
    soon as its byte arrives, before the address, as in v2ray ``handshake5``. VER and RSV are
    not checked, and a bad address type or address gets no reply, only the close: 4.34 reads
    the three bytes, looks at CMD only, and returns its address parser's error as is
    (socks/protocol.go; compared live in tests/scenarios/test_inbound_replies_differential.py)."""
    cur = Cursor(buf)
    try:
        cur.u8()  # VER
        command = _socks5_command(cur.u8())
        cur.u8()  # RSV
        address, port = read_address_port(cur)
    except NeedMore:
        return None
    return Socks5Request(command, address, port), cur.pos


def _socks5_command(value: int) -> Command:
    try:
        return Command(value)
    except ValueError:
        raise RemoteProtocolError(f"unknown SOCKS5 command {value}",
                                  reply=encode_reply(Reply.CMD_NOT_SUPPORTED)) from None


def encode_request(command: int, address: Address, port: int) -> bytes:
    return bytes([SOCKS5_VERSION, command, 0x00]) + encode_address_port(address, port)


def parse_reply(buf: bytes) -> Optional[Tuple[Socks5Reply, int]]:
    """VER REP RSV BND.ADDR BND.PORT, read as 4.34's ``ClientHandshake`` reads it: VER is
    not looked at, and a refusal is known by its first three bytes, its address unread
    (a server that sends only ``05 05 00`` is refused at once, not waited for)."""
    cur = Cursor(buf)
    try:
        cur.u8()
        code = cur.u8()
        cur.u8()  # RSV
        if code != Reply.SUCCEEDED:
            return Socks5Reply(code, ANY_IPV4, 0), cur.pos
        address, port = read_address_port(cur)
    except NeedMore:
        return None
    return Socks5Reply(code, address, port), cur.pos


# -- SOCKS4 / 4a ------------------------------------------------------------------------------

def encode_socks4_reply(granted: bool, port: int = 0, address: Address = ANY_IPV4) -> bytes:
    """VN(0) CD DSTPORT DSTIP; v2ray always answers 0.0.0.0:0."""
    check_port(port)
    if address.kind is not AddressKind.IPV4:
        raise LocalProtocolError("a SOCKS4 reply carries an IPv4 address")
    code = SOCKS4_GRANTED if granted else SOCKS4_REJECTED
    return bytes([SOCKS4_REPLY_VERSION, code]) + _PORT.pack(port) + address.packed()


def _read_nul_terminated(cur: Cursor, what: str, reply: bytes) -> bytes:
    end = cur.find(b"\x00", SOCKS4_MAX_READ)
    if end < 0:
        if cur.remaining > SOCKS4_MAX_READ:
            raise RemoteProtocolError(f"SOCKS4 {what} longer than {SOCKS4_MAX_READ}", reply=reply)
        raise NeedMore
    field = cur.take(end - cur.pos)
    cur.u8()  # the NUL
    return field


def parse_socks4_request(buf: bytes) -> Optional[Tuple[Socks4Request, int]]:
    """VN(4) CD DSTPORT DSTIP USERID NUL, and for 4a DOMAIN NUL.

    4a whenever the first IP byte is 0, as 4.34's ``handshake4`` decides (the 4a spec names
    0.0.0.x, x != 0, only; 0.0.0.0/8 is no address to connect to anyway). An unknown
    command is refused as soon as it is read."""
    rejected = encode_socks4_reply(False)
    cur = Cursor(buf)
    try:
        _expect_version(cur.u8(), SOCKS4_VERSION, "SOCKS4 request")
        command = cur.u8()
        if command not in SOCKS4_COMMANDS:
            raise RemoteProtocolError(f"unknown SOCKS4 command {command}", reply=rejected)
        port = cur.u16()
        ip = cur.take(4)
        userid = _read_nul_terminated(cur, "userid", rejected)
        if ip[0] == 0:
            address = _socks4a_domain(_read_nul_terminated(cur, "domain", rejected), rejected)
        else:
            address = Address.from_packed(ip)
    except NeedMore:
        return None
    return Socks4Request(Command(command), address, port, _text(userid)), cur.pos


def _socks4a_domain(raw: bytes, rejected: bytes) -> Address:
    """A 4a host as 4.34's ``handshake4`` takes it: a domain name whatever it holds (an IP
    literal stays a name, so routing's ``ip`` rules do not see it; no charset check). On
    purpose, refused where 4.34 takes it: an empty one (4.34 dials its own machine), and
    one that is not UTF-8 or holds a control character, which would reach the access log
    as it is (a forged line for fail2ban-style readers)."""
    if not raw:
        raise RemoteProtocolError("empty SOCKS4a domain name", reply=rejected)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("SOCKS4a domain name is not UTF-8", reply=rejected) from None
    if not name.isprintable():
        raise RemoteProtocolError(f"SOCKS4a domain name {name!r} holds a control character",
                                  reply=rejected)
    return Address(name, AddressKind.DOMAIN)


def encode_socks4_request(command: int, address: Address, port: int, userid: str = "") -> bytes:
    """A SOCKS4 request for an IPv4 address, or SOCKS4a for a domain."""
    check_port(port)
    user = _raw(userid)
    if b"\x00" in user or len(user) > SOCKS4_MAX_FIELD:
        raise LocalProtocolError("SOCKS4 userid must be NUL-free and at most 255 bytes")
    head = bytes([SOCKS4_VERSION, command]) + _PORT.pack(port)
    if address.kind is AddressKind.IPV4:
        return head + address.packed() + user + b"\x00"
    if address.kind is AddressKind.IPV6:
        raise LocalProtocolError("SOCKS4 cannot carry an IPv6 address")
    domain = _raw(address.value)
    if not 1 <= len(domain) <= SOCKS4_MAX_FIELD or b"\x00" in domain:
        raise LocalProtocolError("SOCKS4a domain must be 1..255 NUL-free bytes")
    return head + b"\x00\x00\x00\x01" + user + b"\x00" + domain + b"\x00"


def parse_socks4_reply(buf: bytes) -> Optional[Tuple[Socks4Reply, int]]:
    cur = Cursor(buf)
    try:
        _expect_version(cur.u8(), SOCKS4_REPLY_VERSION, "SOCKS4 reply")
        code = cur.u8()
        port = cur.u16()
        address = Address.from_packed(cur.take(4))
    except NeedMore:
        return None
    return Socks4Reply(code == SOCKS4_GRANTED, port, address), cur.pos


# -- UDP ASSOCIATE datagrams (RFC 1928 §7) ----------------------------------------------------

def parse_udp_datagram(data: bytes) -> UdpDatagram:
    """RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA, one whole datagram.

    Fragments are dropped, as v2ray ``DecodeUDPPacket`` does: FRAG != 0 is an error, so a
    returned datagram always has ``frag == 0``. RSV is not checked (v2ray ignores it)."""
    cur = Cursor(data)
    try:
        cur.take(2)  # RSV
        frag = cur.u8()
        if frag != 0:
            raise RemoteProtocolError(f"fragmented SOCKS5 UDP datagram (frag={frag}) dropped")
        address, port = read_address_port(cur)
    except NeedMore:
        raise RemoteProtocolError("truncated SOCKS5 UDP datagram") from None
    return UdpDatagram(frag, address, port, cur.take(cur.remaining))


def encode_udp_datagram(address: Address, port: int, payload: bytes) -> bytes:
    return b"\x00\x00\x00" + encode_address_port(address, port) + payload
