"""DNS message codec (RFC 1035 §4), pure and socket-free.

What the DNS client needs and no more: encode an A or AAAA query, optionally carrying the
EDNS0 client-subnet option (RFC 7871) that v2ray sends for ``clientIp``
(``app/dns/dnscommon.go::genEDNS0Options``), and parse any response: header, questions and
every resource record, with name compression. A, AAAA and CNAME records are decoded; other
types keep their raw RDATA. ``encode_message`` writes a whole message without compression,
which the tests' DNS server uses for its answers.

``parse_message`` follows the ``v2sync.common.cursor`` contract: ``None`` while the buffer
ends before the message does, ``RemoteProtocolError`` for garbage, else
``(message, consumed)``. Over UDP a datagram is the whole message; the incremental form also
serves DNS over TCP (whose 2-byte length prefix is the caller's).
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union, cast

from v2sync.common.cursor import Cursor, NeedMore
from v2sync.common.errors import LocalProtocolError, RemoteProtocolError
from v2sync.common.net import Address, AddressKind

TYPE_A = 1
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_AAAA = 28
TYPE_OPT = 41  # RFC 6891 pseudo-record in the additional section
CLASS_IN = 1

FLAG_QR = 0x8000  # a response
FLAG_AA = 0x0400
FLAG_TC = 0x0200  # truncated
FLAG_RD = 0x0100  # recursion desired: v2ray sets it on every query
FLAG_RA = 0x0080
OPCODE_MASK = 0x7800
RCODE_MASK = 0x000F

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_NAMES = {RCODE_NOERROR: "NOERROR", RCODE_FORMERR: "FORMERR", RCODE_SERVFAIL: "SERVFAIL",
               RCODE_NXDOMAIN: "NXDOMAIN", RCODE_NOTIMP: "NOTIMP", RCODE_REFUSED: "REFUSED"}

HEADER_LENGTH = 12
MAX_MESSAGE_LENGTH = 65535  # a UDP payload or a TCP length prefix cannot describe more
MAX_NAME_LENGTH = 255  # RFC 1035 §2.3.4, in wire octets
MAX_LABEL_LENGTH = 63
# Each pointer must go strictly backwards, which already guarantees termination; the cap
# only keeps a hostile chain short. A 255-octet name has at most 127 labels.
MAX_POINTER_HOPS = 128
LABEL_POINTER = 0xC0  # top two bits of a length byte: 11 = pointer, 00 = label
POINTER_OFFSET_MASK = 0x3FFF

# EDNS0, as v2ray dnscommon.go builds it: UDP payload size 1350 and one client-subnet option
# with the address cut to /24 (IPv4) or /96 (IPv6), scope 0. v2ray also sets odd extended
# flags through SetEDNS0(1350, 0xfe00, true); servers ignore them and we send zero.
EDNS_UDP_PAYLOAD = 1350
EDNS_OPTION_CLIENT_SUBNET = 8
ECS_FAMILY_IPV4 = 1
ECS_FAMILY_IPV6 = 2
ECS_PREFIX_IPV4 = 24
ECS_PREFIX_IPV6 = 96

_HEADER = struct.Struct("!HHHHHH")
_QUESTION_TAIL = struct.Struct("!HH")
_RECORD_HEAD = struct.Struct("!HHIH")
_OPTION_HEAD = struct.Struct("!HH")
_ECS_HEAD = struct.Struct("!HBB")
_ADDRESS_LENGTH = {TYPE_A: 4, TYPE_AAAA: 16}

RecordValue = Union[Address, str, bytes]


@dataclass(frozen=True)
class Question:
    name: str  # without the trailing dot; "" is the root
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True)
class Record:
    """A resource record. ``value`` is an ``Address`` for A/AAAA, the target name for CNAME
    and the raw RDATA for anything else (OPT options included)."""

    name: str
    rtype: int
    ttl: int
    value: RecordValue
    rclass: int = CLASS_IN  # for OPT: the sender's UDP payload size


@dataclass(frozen=True)
class Message:
    id: int
    flags: int  # the whole 16-bit flags word, opcode and rcode included
    questions: Tuple[Question, ...] = ()
    answers: Tuple[Record, ...] = ()
    authorities: Tuple[Record, ...] = ()
    additionals: Tuple[Record, ...] = ()

    @property
    def rcode(self) -> int:
        return self.flags & RCODE_MASK

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def is_truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)

    def addresses(self) -> Tuple[Address, ...]:
        """Every A/AAAA address in the answer section, in order. Like v2ray
        (``dnscommon.go::parseResponse``) the owner name is not checked: a CNAME chain's
        final records carry the alias target's name."""
        return tuple(r.value for r in self.answers
                     if r.rtype in _ADDRESS_LENGTH and isinstance(r.value, Address))

    def client_subnet(self) -> Optional[Tuple[int, int, bytes]]:
        """``(family, source prefix, address bytes)`` of the first client-subnet option."""
        for record in self.additionals:
            if record.rtype == TYPE_OPT and isinstance(record.value, bytes):
                found = _find_client_subnet(record.value)
                if found is not None:
                    return found
        return None


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, f"RCODE{rcode}")


# ---------------------------------------------------------------- encoding


def encode_query(msg_id: int, name: str, qtype: int,
                 client_ip: Optional[Address] = None) -> bytes:
    """A recursive query for one name and type; ``client_ip`` adds the EDNS0 subnet option."""
    additionals: Tuple[Record, ...] = ()
    if client_ip is not None:
        additionals = (client_subnet_record(client_ip),)
    message = Message(msg_id, FLAG_RD, (Question(name, qtype),), additionals=additionals)
    return encode_message(message)


def client_subnet_record(client_ip: Address) -> Record:
    """The OPT pseudo-record carrying ``client_ip`` masked as v2ray masks it."""
    if not client_ip.is_ip:
        raise LocalProtocolError(f"client IP {client_ip} is not an IP address")
    if client_ip.kind is AddressKind.IPV4:
        family, prefix = ECS_FAMILY_IPV4, ECS_PREFIX_IPV4
    else:
        family, prefix = ECS_FAMILY_IPV6, ECS_PREFIX_IPV6
    # RFC 7871 §6: send only the prefix's octets, with the bits past the prefix zeroed.
    masked = ipaddress.ip_network(f"{client_ip.value}/{prefix}", strict=False)
    address = masked.network_address.packed[:(prefix + 7) // 8]
    data = _ECS_HEAD.pack(family, prefix, 0) + address
    option = _OPTION_HEAD.pack(EDNS_OPTION_CLIENT_SUBNET, len(data)) + data
    return Record("", TYPE_OPT, 0, option, rclass=EDNS_UDP_PAYLOAD)


def encode_message(message: Message) -> bytes:
    """The whole message, names written out in full (no compression)."""
    if not 0 <= message.id <= 0xFFFF or not 0 <= message.flags <= 0xFFFF:
        raise LocalProtocolError("message id and flags are 16-bit values")
    sections = (message.questions, message.answers, message.authorities, message.additionals)
    parts = [_HEADER.pack(message.id, message.flags, *(len(s) for s in sections))]
    for question in message.questions:
        parts.append(encode_name(question.name))
        parts.append(_QUESTION_TAIL.pack(question.qtype, question.qclass))
    for section in sections[1:]:
        parts.extend(_encode_record(record) for record in section)
    out = b"".join(parts)
    if len(out) > MAX_MESSAGE_LENGTH:
        raise LocalProtocolError(f"DNS message of {len(out)} bytes exceeds {MAX_MESSAGE_LENGTH}")
    return out


def encode_name(name: str) -> bytes:
    """``example.com`` (a trailing dot is allowed) as length-prefixed labels."""
    text = name[:-1] if name.endswith(".") else name
    out = bytearray()
    for label in text.split(".") if text else ():
        try:
            raw = label.encode("ascii")
        except UnicodeEncodeError as e:
            raise LocalProtocolError(f"DNS name {name!r} is not ASCII (use punycode)") from e
        if not 0 < len(raw) <= MAX_LABEL_LENGTH:
            raise LocalProtocolError(f"DNS name {name!r} has an empty or over-long label")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME_LENGTH:
        raise LocalProtocolError(f"DNS name {name!r} is longer than {MAX_NAME_LENGTH} octets")
    return bytes(out)


def _encode_record(record: Record) -> bytes:
    rdata = _encode_rdata(record)
    head = _RECORD_HEAD.pack(record.rtype, record.rclass, record.ttl, len(rdata))
    return encode_name(record.name) + head + rdata


def _encode_rdata(record: Record) -> bytes:
    value = record.value
    if record.rtype in _ADDRESS_LENGTH:
        if not isinstance(value, Address) or len(value.packed()) != _ADDRESS_LENGTH[record.rtype]:
            raise LocalProtocolError(f"record type {record.rtype} needs a matching IP address")
        return value.packed()
    if record.rtype == TYPE_CNAME:
        if not isinstance(value, str):
            raise LocalProtocolError("a CNAME record needs a target name")
        return encode_name(value)
    if not isinstance(value, bytes):
        raise LocalProtocolError(f"record type {record.rtype} needs raw bytes")
    return value


# ---------------------------------------------------------------- parsing


def parse_message(buf: bytes) -> Optional[Tuple[Message, int]]:
    """One DNS message from the front of ``buf`` (cursor contract, see the module doc)."""
    cur = Cursor(buf)
    try:
        msg_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack(cur.take(HEADER_LENGTH))
        questions = tuple(_parse_question(cur) for _ in range(qdcount))
        answers = _parse_records(cur, ancount)
        authorities = _parse_records(cur, nscount)
        additionals = _parse_records(cur, arcount)
    except NeedMore:
        if len(buf) >= MAX_MESSAGE_LENGTH:
            raise RemoteProtocolError("DNS message longer than 65535 bytes") from None
        return None
    if cur.pos > MAX_MESSAGE_LENGTH:
        raise RemoteProtocolError("DNS message longer than 65535 bytes")
    return Message(msg_id, flags, questions, answers, authorities, additionals), cur.pos


def parse_first_question(buf: bytes) -> Optional[Tuple[int, Question]]:
    """The id and the first question of a whole message, None without one; the rest is
    not read, as Go's dnsmessage Parser reads no further than it is asked (4.34's
    parseIPQuery asks for the header and one question)."""
    cur = Cursor(buf)
    try:
        msg_id, _, qdcount = _HEADER.unpack(cur.take(HEADER_LENGTH))[:3]
        return (msg_id, _parse_question(cur)) if qdcount else None
    except NeedMore:
        return None


def _parse_question(cur: Cursor) -> Question:
    name = read_name(cur)
    qtype, qclass = _QUESTION_TAIL.unpack(cur.take(4))
    return Question(name, qtype, qclass)


def _parse_records(cur: Cursor, count: int) -> Tuple[Record, ...]:
    return tuple(_parse_record(cur) for _ in range(count))


def _parse_record(cur: Cursor) -> Record:
    name = read_name(cur)
    rtype, rclass, ttl, rdlength = _RECORD_HEAD.unpack(cur.take(10))
    start = cur.pos
    cur.take(rdlength)  # the whole RDATA must be present before it is interpreted
    # Parse RDATA through a cursor that ends where RDATA ends (dnspython restrict_to), over
    # the whole buffer so compression pointers inside it resolve.
    rdata = Cursor(cast(bytes, cur.buf), start, start + rdlength)
    value = _parse_rdata(rdata, rtype)
    if rdata.remaining:
        raise RemoteProtocolError(f"record type {rtype}: {rdata.remaining} stray RDATA bytes")
    return Record(name, rtype, ttl, value, rclass)


def _parse_rdata(rdata: Cursor, rtype: int) -> RecordValue:
    try:
        if rtype in _ADDRESS_LENGTH:
            if rdata.remaining != _ADDRESS_LENGTH[rtype]:
                raise RemoteProtocolError(f"record type {rtype} with {rdata.remaining} RDATA bytes")
            return Address.from_packed(rdata.take(rdata.remaining))
        if rtype == TYPE_CNAME:
            return read_name(rdata)
        return rdata.take(rdata.remaining)
    except NeedMore:  # RDATA is complete, so running off its end is garbage, not "wait"
        raise RemoteProtocolError(f"record type {rtype}: RDATA shorter than its content") from None


def read_name(cur: Cursor) -> str:
    """A possibly compressed name starting at ``cur.pos``; ``cur`` ends up past it."""
    labels: List[bytes] = []
    wire_length = 0
    hops = 0
    reader = cur  # switches to a fresh cursor once a pointer has been followed
    floor = cur.pos  # a pointer must point strictly before the name piece that holds it
    while True:  # bounded: every label grows wire_length, every pointer grows hops
        length = reader.u8()
        if length == 0:
            return _join_labels(labels)
        kind = length & LABEL_POINTER
        if kind == LABEL_POINTER:
            target = ((length << 8) | reader.u8()) & POINTER_OFFSET_MASK
            hops += 1
            if target >= floor:
                raise RemoteProtocolError("DNS name pointer does not point backwards")
            if hops > MAX_POINTER_HOPS:
                raise RemoteProtocolError("DNS name has too many compression pointers")
            reader, floor = Cursor(cast(bytes, cur.buf), target, len(cur.buf)), target
            continue
        if kind:
            raise RemoteProtocolError(f"unsupported DNS label type {length:#04x}")
        wire_length += 1 + length
        if wire_length + 1 > MAX_NAME_LENGTH:
            raise RemoteProtocolError("DNS name longer than 255 octets")
        labels.append(reader.take(length))


def _join_labels(labels: Sequence[bytes]) -> str:
    # latin-1 maps every octet to one character, so odd bytes never make decoding fail.
    return ".".join(label.decode("latin-1") for label in labels)


def _find_client_subnet(options: bytes) -> Optional[Tuple[int, int, bytes]]:
    cur = Cursor(options)
    try:
        while cur.remaining:
            code, length = _OPTION_HEAD.unpack(cur.take(4))
            data = cur.take(length)
            if code == EDNS_OPTION_CLIENT_SUBNET and len(data) >= _ECS_HEAD.size:
                family, prefix, _scope = _ECS_HEAD.unpack(data[:_ECS_HEAD.size])
                return family, prefix, data[_ECS_HEAD.size:]
    except NeedMore:
        raise RemoteProtocolError("truncated EDNS option") from None
    return None
