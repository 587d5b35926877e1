"""What the dns outbound reads and writes, pure and socket-free (v2ray ``proxy/dns/dns.go``,
``common/protocol/dns/io.go``).

- ``parse_ip_query``: is a message an A or AAAA question (as ``parseIPQuery``: the first
  question decides; anything unparsable is simply "not an IP query" and is passed on).
- ``encode_ip_answer``: the answer 4.34 builds (``handleIPQuery``): the query's id, flags
  QR AA RD RA, the rcode, the question, one record per address with TTL 600.
- ``parse_tcp_message`` / ``frame_tcp_message``: DNS over TCP's 2-byte length prefix,
  with 4.34's 2 KiB limit per message.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from v2sync.app.dns import wire
from v2sync.common.errors import ProtocolError, RemoteProtocolError
from v2sync.common.net import Address, AddressKind

ANSWER_TTL = 600
ANSWER_FLAGS = wire.FLAG_QR | wire.FLAG_AA | wire.FLAG_RD | wire.FLAG_RA
# io.go TCPReader: a length over buf.Size (2048) is an error that ends the connection.
MAX_TCP_MESSAGE = 2048
_LENGTH = struct.Struct("!H")
_IP_TYPES = {wire.TYPE_A: AddressKind.IPV4, wire.TYPE_AAAA: AddressKind.IPV6}


@dataclass(frozen=True)
class IPQuery:
    id: int
    qtype: int  # wire.TYPE_A or wire.TYPE_AAAA
    name: str   # without the trailing dot


def parse_ip_query(message: bytes) -> Optional[IPQuery]:
    """The query's id, type and name if its first question asks for A or AAAA (whatever
    follows that question, as 4.34's parseIPQuery)."""
    try:
        found = wire.parse_first_question(message)
    except ProtocolError:
        return None
    if found is None or found[1].qtype not in _IP_TYPES:
        return None
    msg_id, question = found
    return IPQuery(msg_id, question.qtype, question.name)


def encode_ip_answer(query: IPQuery, addresses: Sequence[Address], rcode: int = 0) -> bytes:
    """The reply; addresses of the other family are left out."""
    kind = _IP_TYPES[query.qtype]
    records = tuple(wire.Record(query.name, query.qtype, ANSWER_TTL, a)
                    for a in addresses if a.kind is kind)
    return wire.encode_message(wire.Message(
        query.id, ANSWER_FLAGS | (rcode & wire.RCODE_MASK),
        (wire.Question(query.name, query.qtype),), records))


def parse_tcp_message(buf: bytes) -> Optional[Tuple[bytes, int]]:
    """One length-prefixed message: None for more, else (message, consumed)."""
    if len(buf) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(buf)
    if length > MAX_TCP_MESSAGE:
        raise RemoteProtocolError(f"DNS message of {length} bytes over TCP (limit "
                                  f"{MAX_TCP_MESSAGE})")
    end = _LENGTH.size + length
    if len(buf) < end:
        return None
    return bytes(buf[_LENGTH.size:end]), end


def frame_tcp_message(message: bytes) -> bytes:
    return _LENGTH.pack(len(message)) + message
