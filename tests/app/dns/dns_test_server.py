"""A tiny authoritative-style DNS server over UDP on loopback, for the DNS app's tests.

It answers A and AAAA queries from a ``records`` dict (name -> IP strings; a name present with
no IP of the asked family gets an empty NOERROR answer, an absent name NXDOMAIN), follows
``cnames`` once, uses ``ttl`` for every record (changeable between lookups), and records
every query it receives so tests can count them and inspect the EDNS client-subnet option.
``silent=True`` makes it record queries and never answer (a server that times out).

Bounded like tests/support/peers.py: a polling timeout on the socket, a cap on loop turns, a
joined non-daemon thread and the socket closed on exit (warnings are errors in pytest).
"""
from __future__ import annotations

import socket
import threading
from typing import List, Mapping, Optional, Sequence, Tuple

from v2sync.app.dns import wire
from v2sync.common.errors import RemoteProtocolError
from v2sync.common.net import Address

POLL_SECONDS = 0.05
JOIN_SECONDS = 5.0
MAX_TURNS = 10_000  # polls plus datagrams: at most ~500 s of life
SOA_BYTES = b"\x00" * 22  # an opaque stand-in: clients only read a negative answer's TTL


class DnsTestServer:
    def __init__(self, records: Optional[Mapping[str, Sequence[str]]] = None, *, ttl: int = 60,
                 cnames: Optional[Mapping[str, str]] = None, silent: bool = False,
                 negative_ttl: Optional[int] = None, rcode: int = wire.RCODE_NOERROR,
                 host: str = "127.0.0.1"):
        self.records = {k: [Address.parse(ip) for ip in v] for k, v in (records or {}).items()}
        self.cnames = dict(cnames or {})
        self.ttl = ttl
        self.silent = silent
        self.negative_ttl = negative_ttl
        self.rcode = rcode  # forced for every answer when not NOERROR (SERVFAIL, REFUSED...)
        self.host = host
        self.port = 0
        self._queries: List[wire.Message] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Tuple[str, int]:
        return self.host, self.port

    @property
    def queries(self) -> List[wire.Message]:
        with self._lock:
            return list(self._queries)

    def count(self, name: Optional[str] = None, qtype: Optional[int] = None) -> int:
        return sum(1 for q in self.queries for question in q.questions[:1]
                   if (name is None or question.name == name)
                   and (qtype is None or question.qtype == qtype))

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
                data, peer = self._sock.recvfrom(wire.MAX_MESSAGE_LENGTH)
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
            parsed = wire.parse_message(data)
        except RemoteProtocolError:
            return None
        if parsed is None or not parsed[0].questions:
            return None
        query = parsed[0]
        with self._lock:
            self._queries.append(query)
        if self.silent:
            return None
        return wire.encode_message(self.answer(query))

    def answer(self, query: wire.Message) -> wire.Message:
        question = query.questions[0]
        answers: List[wire.Record] = []
        name = question.name
        if name in self.cnames:
            answers.append(wire.Record(name, wire.TYPE_CNAME, self.ttl, self.cnames[name]))
            name = self.cnames[name]
        rcode = self.rcode
        if rcode == wire.RCODE_NOERROR and name not in self.records:
            rcode = wire.RCODE_NXDOMAIN
        family = {wire.TYPE_A: 4, wire.TYPE_AAAA: 6}.get(question.qtype)
        answers += [wire.Record(name, question.qtype, self.ttl, ip)
                    for ip in self.records.get(name, ()) if ip.ip().version == family]
        authorities: Tuple[wire.Record, ...] = ()
        if not answers and self.negative_ttl is not None:
            authorities = (wire.Record(name, wire.TYPE_SOA, self.negative_ttl, SOA_BYTES),)
        flags = wire.FLAG_QR | wire.FLAG_RD | wire.FLAG_RA | rcode
        return wire.Message(query.id, flags, query.questions, tuple(answers), authorities)

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
