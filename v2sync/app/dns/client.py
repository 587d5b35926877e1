"""Name servers: plain DNS over UDP (v2ray ``app/dns/nameserver_udp.go``) and the system
resolver (``nameserver_local.go``). The only module of the DNS app that opens sockets.

``UdpNameServer.exchange`` sends the A and/or AAAA queries from one fresh socket (a new random
source port per exchange, plus random 16-bit IDs: RFC 5452's defences against spoofed answers),
connected to the server so the kernel drops datagrams from anyone else. It waits until every
query is answered or one absolute deadline passes (4 s, v2ray ``nameserver.go``), resending the
unanswered queries once half-way, since a UDP query or answer may simply be lost.

Each exchange's datagrams go through a channel: a connected socket of this host's (the
default, and what tests of the resolver alone use), or, once the Instance is built, the
dispatcher (``app/dns/routed.py``), as 4.34 sends its queries: routed like any UDP flow,
tagged ``dns.tag``, so the first outbound (or a rule) carries them.
"""
from __future__ import annotations

import logging
import secrets
import socket
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from v2sync.app.dns import wire
from v2sync.common.errors import LocalProtocolError, RemoteProtocolError, TransportError
from v2sync.transport.internet.resolve import of_families, system_lookup
from v2sync.common.net import Address, AddressKind
from v2sync.common.task import outside_slot

log = logging.getLogger(__name__)

QUERY_TIMEOUT = 4.0  # nameserver.go Client.QueryIP: context.WithTimeout(ctx, 4*time.Second)
QUERY_ATTEMPTS = 2  # sends per query within that deadline
RECV_SIZE = 65535
# Stray or spoofed datagrams read before giving up: the deadline ends a flood first (4.34
# reads until it); the count only bounds the loop. 64 let ~130 junk datagrams per query
# hide the answer queued behind them, so a name failed to resolve (found by a review).
MAX_DATAGRAMS_PER_EXCHANGE = 65536
# dnscommon.go::parseResponse starts every record at now+600 s and lowers it to the smallest
# answer TTL, so 600 s is both the ceiling and what an answer without records gets.
MAX_CACHE_TTL = 600
QTYPE_FAMILY = {wire.TYPE_A: AddressKind.IPV4, wire.TYPE_AAAA: AddressKind.IPV6}
# Answers that say something about the name itself, so they may be cached (RFC 2308).
CACHEABLE_RCODES = (wire.RCODE_NOERROR, wire.RCODE_NXDOMAIN)


class DnsTimeout(TransportError):
    """The server did not answer (in time, or at all): the resolver tries the next one."""


@dataclass(frozen=True)
class Answer:
    """What one server said about one name and query type."""

    qtype: int
    rcode: int
    addresses: Tuple[Address, ...]
    ttl: int  # seconds it may be cached; 0 = not at all

    @property
    def is_cacheable(self) -> bool:
        return self.ttl > 0 and self.rcode in CACHEABLE_RCODES


def answer_from_message(message: wire.Message, qtype: int) -> Answer:
    """An answer other than NOERROR has no addresses, whatever records it carries: 4.34's
    ``getIPs`` returns the rcode's error instead of them."""
    family = QTYPE_FAMILY.get(qtype)
    addresses: Tuple[Address, ...] = ()
    if message.rcode == wire.RCODE_NOERROR:
        addresses = tuple(a for a in message.addresses() if a.kind is family)
    return Answer(qtype, message.rcode, addresses, answer_ttl(message))


def answer_ttl(message: wire.Message) -> int:
    """The smallest TTL among the answers, capped at 600 s as in 4.34. With no answers, the
    authority records' TTL (the SOA of a negative answer, RFC 2308 §5), else 600 s (4.34).
    A zero TTL means "do not cache" (RFC 1035 §3.2.1); 4.34 reads it as 600 s instead."""
    records = message.answers or message.authorities
    if not records:
        return MAX_CACHE_TTL
    return min(MAX_CACHE_TTL, min(r.ttl for r in records))


class DatagramChannel(Protocol):
    """Where one exchange's queries go and its answers come from."""

    def send(self, data: bytes) -> None:
        """One datagram; raises OSError or TransportError when it cannot go."""

    def recv(self, timeout: float) -> Optional[bytes]:
        """The next datagram, or None after ``timeout`` seconds without one."""

    def close(self) -> None: ...


# Opens a channel to a server (host, port): the routed one (app/dns/routed.py).
Dial = Callable[[str, int], DatagramChannel]


class _SocketChannel:
    """A UDP socket of this host's, connected to the server: the kernel drops datagrams
    from anyone else."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self, timeout: float) -> Optional[bytes]:
        self.sock.settimeout(timeout)
        try:
            return outside_slot(self.sock.recv, RECV_SIZE)
        except socket.timeout:
            return None

    def close(self) -> None:
        self.sock.close()


class UdpNameServer:
    """A classic DNS server reached over UDP; ``host`` may be an IP or a name (then resolved
    by the system, as 4.34's freedom dial would). ``dial``, when set, opens each exchange's
    channel (the dispatcher's); else a socket of this host's."""

    dial: Optional[Dial] = None

    def __init__(self, host: str, port: int = 53, client_ip: Optional[Address] = None,
                 timeout: float = QUERY_TIMEOUT, attempts: int = QUERY_ATTEMPTS):
        if timeout <= 0 or attempts < 1:
            raise ValueError("timeout must be positive and attempts at least 1")
        self.host = host
        self.port = port
        self.client_ip = client_ip
        self.timeout = timeout
        self.attempts = attempts
        bracketed = f"[{host}]" if ":" in host else host
        self.name = f"UDP:{bracketed}:{port}"

    def exchange(self, domain: str, qtypes: Sequence[int]) -> Dict[int, Answer]:
        """Answers by query type; a type missing from the result got no answer in time.
        Raises ``DnsTimeout`` if the server is unreachable, ``TransportError`` if the name
        cannot be put in a query."""
        queries = self._build_queries(domain, qtypes)
        start = time.monotonic()
        with closing(self._open()) as channel:
            answers: Dict[int, Answer] = {}
            for attempt in range(1, self.attempts + 1):
                self._send(channel, [q for q in queries if q.qtype not in answers])
                attempt_end = start + self.timeout * attempt / self.attempts
                self._receive(channel, domain, queries, answers, attempt_end)
                if len(answers) == len(queries):
                    break
        return answers

    def _open(self) -> DatagramChannel:
        if self.dial is None:
            return _SocketChannel(self._connect())
        try:
            return self.dial(self.host, self.port)
        except TransportError as e:
            raise DnsTimeout(f"{self.name}: {e}") from e

    def _build_queries(self, domain: str, qtypes: Sequence[int]) -> List["_Query"]:
        ids = _unique_ids(len(qtypes))
        try:
            return [_Query(qtype, msg_id, wire.encode_query(msg_id, domain, qtype, self.client_ip))
                    for qtype, msg_id in zip(qtypes, ids)]
        except LocalProtocolError as e:
            raise TransportError(f"cannot query {domain!r}: {e}") from e

    def _connect(self) -> socket.socket:
        try:
            family, kind, proto, _, sockaddr = outside_slot(
                socket.getaddrinfo, self.host, self.port, 0, socket.SOCK_DGRAM)[0]
        except (OSError, UnicodeError) as e:
            raise DnsTimeout(f"{self.name}: cannot resolve the server: {e}") from e
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as e:  # out of file descriptors
            raise DnsTimeout(f"{self.name}: {e}") from e
        try:
            sock.connect(sockaddr)
        except OSError as e:
            sock.close()
            raise DnsTimeout(f"{self.name}: {e}") from e
        return sock

    def _send(self, channel: DatagramChannel, queries: Sequence["_Query"]) -> None:
        for query in queries:
            try:
                channel.send(query.wire)
            except (OSError, TransportError) as e:  # e.g. ECONNREFUSED from an ICMP error
                raise DnsTimeout(f"{self.name}: send failed: {e}") from e

    def _receive(self, channel: DatagramChannel, domain: str, queries: Sequence["_Query"],
                 answers: Dict[int, Answer], end: float) -> None:
        for _ in range(MAX_DATAGRAMS_PER_EXCHANGE):
            remaining = end - time.monotonic()
            if remaining <= 0 or len(answers) == len(queries):
                return
            try:
                datagram = channel.recv(remaining)
            except (OSError, TransportError) as e:  # ICMP port unreachable: ECONNREFUSED
                raise DnsTimeout(f"{self.name}: {e}") from e
            if datagram is None:
                return
            matched = _match_response(datagram, domain, queries)
            if matched is not None and matched[0].qtype not in answers:
                query, message = matched
                answers[query.qtype] = answer_from_message(message, query.qtype)


@dataclass(frozen=True)
class _Query:
    qtype: int
    msg_id: int
    wire: bytes


def _unique_ids(count: int) -> List[int]:
    ids: List[int] = []
    while len(ids) < count:  # bounded: count is 1 or 2 and a repeat is 1 in 65536
        candidate = secrets.randbits(16)
        if candidate not in ids:
            ids.append(candidate)
    return ids


def _match_response(datagram: bytes, domain: str,
                    queries: Sequence[_Query]) -> Optional[Tuple[_Query, wire.Message]]:
    """The query this datagram answers, or None for garbage and strays. 4.34 matches on the
    ID alone; we also require the echoed question (RFC 5452 §9.1), compared without case
    because some servers randomise it (the "0x20" trick)."""
    try:
        parsed = wire.parse_message(datagram)
    except RemoteProtocolError as e:
        log.debug("dropping malformed DNS response: %s", e)
        return None
    if parsed is None or not parsed[0].is_response:
        return None
    message = parsed[0]
    for query in queries:
        if message.id == query.msg_id and _echoes_question(message, domain, query.qtype):
            return query, message
    return None


def _echoes_question(message: wire.Message, domain: str, qtype: int) -> bool:
    if len(message.questions) != 1:
        return False
    question = message.questions[0]
    return question.qtype == qtype and question.name.lower() == domain.rstrip(".").lower()


class LocalNameServer:
    """The system resolver (``getaddrinfo``: /etc/hosts, then resolv.conf). Its timeouts are
    the system's (resolv.conf ``timeout``/``attempts``); it reports no TTL, so nothing is
    cached, as with 4.34's localdns."""

    name = "localhost"

    def resolve(self, domain: str, want_ipv4: bool, want_ipv6: bool) -> Tuple[Address, ...]:
        """IPv4 addresses first, then IPv6 (none: the name has no address of the wanted
        family); ``TransportError`` if the name does not resolve. Every family is asked
        for, then filtered, as Go's resolver does: a name /etc/hosts knows in IPv4 only has
        no IPv6 address, rather than being asked of the system's DNS server."""
        try:
            infos = system_lookup(domain, None, socket.AF_UNSPEC)
        except (OSError, UnicodeError) as e:
            raise TransportError(f"system resolver: {domain}: {e}") from e
        found = dict.fromkeys(Address.parse(str(info[4][0]).split("%")[0]) for info in infos)
        return of_families(found, want_ipv4, want_ipv6)
