"""A tiny authoritative-style DNS server over UDP on loopback, for the DNS app's tests.

It answers A and AAAA queries from a ``records`` dict (name -> IP strings; a name present with
no IP of the asked family gets an empty NOERROR answer, an absent name NXDOMAIN), follows
``cnames`` once, uses ``ttl`` for every record (changeable between lookups), and records
every query it receives so tests can count them and inspect the EDNS client-subnet option.
``silent=True`` makes it record queries and never answer (a server that times out).

Queries are parsed and answers built with dnspython, never with v2sync's own codec
(``v2sync.app.dns.wire``), so a layout mistake in that codec cannot be mirrored here and
pass; tests/app/dns/test_dns_dnsmasq.py adds a real resolver (dnsmasq) as the peer.

Bounded like tests/support/peers.py: a polling timeout on the socket, a cap on loop turns, a
joined non-daemon thread and the socket closed on exit (warnings are errors in pytest).
"""
from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

POLL_SECONDS = 0.05
JOIN_SECONDS = 5.0
MAX_TURNS = 10_000  # polls plus datagrams: at most ~500 s of life
MAX_DATAGRAM = 65535
RCODE_NOERROR = 0
SOA_TEXT = "ns.test. hostmaster.test. 1 3600 600 86400 {minimum}"


@dataclass(frozen=True)
class SeenQuery:
    """What the server read from one query datagram (through dnspython)."""

    id: int
    name: str  # without the final dot, as asked
    qtype: int
    ecs: Optional[Tuple[int, int, bytes]]  # (family, source prefix, address bytes sent)

    def client_subnet(self) -> Optional[Tuple[int, int, bytes]]:
        return self.ecs


def _client_subnet(query: dns.message.Message) -> Optional[Tuple[int, int, bytes]]:
    for option in query.options:
        if isinstance(option, dns.edns.ECSOption):
            packed = ipaddress.ip_address(option.address).packed
            return option.family, option.srclen, packed[:(option.srclen + 7) // 8]
    return None


class DnsTestServer:
    def __init__(self, records: Optional[Mapping[str, Sequence[object]]] = None, *, ttl: int = 60,
                 cnames: Optional[Mapping[str, str]] = None, silent: bool = False,
                 negative_ttl: Optional[int] = None, rcode: int = RCODE_NOERROR,
                 host: str = "127.0.0.1", silent_types: Sequence[int] = ()):
        # name -> addresses (strings, or anything whose str() is one); tests may swap them.
        self.records = {k: list(v) for k, v in (records or {}).items()}
        self.cnames = dict(cnames or {})
        self.ttl = ttl
        self.silent = silent
        self.silent_types = frozenset(silent_types)  # query types never answered
        self.negative_ttl = negative_ttl
        self.rcode = rcode  # forced for every answer when not NOERROR (SERVFAIL, REFUSED...)
        self.host = host
        self.port = 0
        self._queries: List[SeenQuery] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Tuple[str, int]:
        return self.host, self.port

    @property
    def queries(self) -> List[SeenQuery]:
        with self._lock:
            return list(self._queries)

    def count(self, name: Optional[str] = None, qtype: Optional[int] = None) -> int:
        return sum(1 for q in self.queries
                   if (name is None or q.name == name) and (qtype is None or q.qtype == qtype))

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, 0))
            sock.settimeout(POLL_SECONDS)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="dns-test-server")
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        for _ in range(MAX_TURNS):
            if self._stop.is_set():
                return
            try:
                data, peer = self._sock.recvfrom(MAX_DATAGRAM)
            except socket.timeout:
                continue
            reply = self._handle(data)
            if reply is not None:
                try:
                    self._sock.sendto(reply, peer)
                except OSError:
                    pass  # the client's socket is gone: drop, as UDP would

    def _handle(self, data: bytes) -> Optional[bytes]:
        try:
            query = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError):
            return None
        if not query.question:
            return None
        question = query.question[0]
        seen = SeenQuery(query.id, question.name.to_text(omit_final_dot=True), int(question.rdtype),
                         _client_subnet(query))
        with self._lock:
            self._queries.append(seen)
        if self.silent or seen.qtype in self.silent_types:
            return None
        return self.answer(query).to_wire(want_shuffle=False)  # keep the records' order

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        question = query.question[0]
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.RA
        reply.use_edns(False)  # as the old server: no OPT record in answers
        name = question.name.to_text(omit_final_dot=True)
        if name in self.cnames:
            reply.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", "CNAME",
                                                    self.cnames[name] + "."))
            name = self.cnames[name]
        rcode = self.rcode
        if rcode == RCODE_NOERROR and name not in self.records:
            rcode = dns.rcode.NXDOMAIN
        reply.set_rcode(rcode)
        family = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(question.rdtype)
        found = [str(ip) for ip in self.records.get(name, ()) if ipaddress.ip_address(str(ip)).version == family]
        if found:
            reply.answer.append(dns.rrset.from_text(name + ".", self.ttl, "IN",
                                                    dns.rdatatype.to_text(question.rdtype), *found))
        elif self.negative_ttl is not None:
            reply.authority.append(dns.rrset.from_text(name + ".", self.negative_ttl, "IN", "SOA",
                                                       SOA_TEXT.format(minimum=self.negative_ttl)))
        return reply

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("dns-test-server thread did not stop")

    def __enter__(self) -> "DnsTestServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
