"""The DNS feature: ``DnsResolver.lookup`` (v2ray ``app/dns/dns.go``, ``hosts.go``).

A lookup goes through, in order:

1. ``hosts``: every matching entry contributes its IPs (full matches, then domain matches
   from the most specific, then keyword/regexp in key order). A lone domain value replaces
   the name (followed through ``hosts`` up to 5 times) and the new name goes to the servers.
   Matching IPs of the wrong family give an error, not a server query (4.34 does the same).
2. the servers: those whose ``domains`` match the name first, in match order, then all the
   others in config order. The system resolver ("localhost") also claims dotless names and
   the local TLDs (``local``, ``lan``, ``localhost``...: ``app/dns/config.go``). A server that
   does not answer in time, or whose answers all fall outside its ``expectIps``, passes the
   name to the next server; any other failure (NXDOMAIN, an empty answer) ends the lookup,
   as in ``dns.go::lookupIPInternal``.
3. no servers configured: the system resolver.

Each UDP server has its own cache of answers keyed by (name, query type), kept for the
answer's TTL (see ``client.answer_ttl``) by an injectable clock. ``expectIps`` filters after
the cache, so the cache holds what the server said.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from v2sync.app.dns import wire
from v2sync.app.dns.client import (QUERY_ATTEMPTS, QUERY_TIMEOUT, Answer, Dial, DnsTimeout,
                                   LocalNameServer, UdpNameServer)
from v2sync.app.dns.config import DnsConfig, HostMapping, NameServerConfig
from v2sync.app.dns.matcher import DOMAIN, REGEXP, DomainMatcherGroup, DomainRule
from v2sync.app.router.matchers import IpSet
from v2sync.common.errors import TransportError
from v2sync.transport.internet.resolve import of_families
from v2sync.common.net import Address

log = logging.getLogger(__name__)

USE_IP = "UseIP"
USE_IPV4 = "UseIPv4"
USE_IPV6 = "UseIPv6"
STRATEGIES = {USE_IP: (True, True), USE_IPV4: (True, False), USE_IPV6: (False, True)}
MAX_REPLACEMENT_DEPTH = 5  # hosts.go: Lookup(domain, option) unwraps at most 5 times
CACHE_MAX_ENTRIES = 4096  # per server; the oldest entry goes first when full
# config.go localTLDsAndDotlessDomains: names the system resolver answers first.
LOCAL_RESOLVER_DOMAINS = (DomainRule(REGEXP, "^[^.]+$"),) + tuple(
    DomainRule(DOMAIN, tld) for tld in
    ("local", "localdomain", "localhost", "lan", "home.arpa", "example", "invalid", "test"))

Clock = Callable[[], float]
CacheKey = Tuple[str, int]


class DnsCache:
    """Answers by (name, query type) until they expire; bounded, thread-safe."""

    def __init__(self, clock: Clock = time.monotonic, max_entries: int = CACHE_MAX_ENTRIES):
        self._clock = clock
        self._max_entries = max_entries
        self._entries: "OrderedDict[CacheKey, Tuple[float, Answer]]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> Optional[Answer]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() >= entry[0]:
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: CacheKey, answer: Answer) -> None:
        if not answer.is_cacheable:
            return
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self._max_entries:  # bounded by max_entries
                self._entries.popitem(last=False)
            self._entries[key] = (self._clock() + answer.ttl, answer)

    def __len__(self) -> int:
        return len(self._entries)


class DnsAnswerError(TransportError):
    """The server answered without an address; ``rcode`` is what it said (NOERROR for an
    empty answer). The dns outbound passes it on (4.34 ``dns.RCodeFromError``)."""

    def __init__(self, message: str, rcode: int = wire.RCODE_NOERROR):
        super().__init__(message)
        self.rcode = rcode


class _TryNext(TransportError):
    """This server gave nothing usable; 4.34 moves on to the next one."""


class NeedsNetwork(Exception):
    """``lookup(..., cached_only=True)``: the answer would take a server's (or the system
    resolver's) time."""


class NameServerClient:
    """One configured server with its cache, client IP and ``expectIps``
    (v2ray ``nameserver.go::Client``)."""

    def __init__(self, config: NameServerConfig, server: Union[UdpNameServer, LocalNameServer],
                 clock: Clock):
        self.config = config
        self.server = server
        self.cache = DnsCache(clock)
        self.name = server.name
        # One bisect per answer however long the list (a geoip:cn is thousands of CIDRs).
        self._expect_ips = IpSet.from_cidrs(config.expect_ips) if config.expect_ips else None

    def query(self, domain: str, want_ipv4: bool, want_ipv6: bool,
              cached_only: bool = False) -> List[Address]:
        if isinstance(self.server, LocalNameServer):
            if cached_only:
                raise NeedsNetwork(domain)
            found = list(self.server.resolve(domain, want_ipv4, want_ipv6))
            if not found:  # 4.34's localdns: ErrEmptyResponse, a NOERROR answer
                raise DnsAnswerError(f"{self.name}: {domain}: empty response")
        else:
            found = self._query_udp(self.server, domain, want_ipv4, want_ipv6, cached_only)
        return self._expected(domain, found)

    def _query_udp(self, server: UdpNameServer, domain: str, want_ipv4: bool,
                   want_ipv6: bool, cached_only: bool) -> List[Address]:
        qtypes = [t for t, on in ((wire.TYPE_A, want_ipv4), (wire.TYPE_AAAA, want_ipv6)) if on]
        answers: Dict[int, Answer] = {}
        missing = []
        for qtype in qtypes:
            cached = self.cache.get((domain, qtype))
            if cached is None:
                missing.append(qtype)
            else:
                answers[qtype] = cached
        # As 4.34's findIPsForDomain: addresses the cache holds for one type are served
        # without asking again for the other (a server that never answers AAAA would
        # otherwise cost every lookup its timeout).
        if missing and not any(answer.addresses for answer in answers.values()):
            if cached_only:
                raise NeedsNetwork(domain)
            try:
                fresh = server.exchange(domain, missing)
            except DnsTimeout as e:
                raise _TryNext(str(e)) from e
            for qtype, answer in fresh.items():
                self.cache.put((domain, qtype), answer)
            answers.update(fresh)
        return self._combine(domain, qtypes, answers)

    def _combine(self, domain: str, qtypes: Sequence[int], answers: Dict[int, Answer]
                 ) -> List[Address]:
        found = [a for qtype in qtypes if qtype in answers for a in answers[qtype].addresses]
        if found:
            return found
        if any(qtype not in answers for qtype in qtypes):
            raise _TryNext(f"{self.name}: no answer for {domain} in time")
        failed = [a.rcode for a in answers.values() if a.rcode != wire.RCODE_NOERROR]
        if failed:
            raise DnsAnswerError(f"{self.name}: {domain}: {wire.rcode_name(failed[0])}",
                                 failed[0])
        raise DnsAnswerError(f"{self.name}: {domain}: empty response")

    def _expected(self, domain: str, found: List[Address]) -> List[Address]:
        expected = self._expect_ips
        if expected is None:
            return found
        kept = [a for a in found if expected.contains(a)]
        if not kept:
            raise _TryNext(f"{self.name}: no answer for {domain} matches expectIps")
        return kept


class DnsResolver:
    """The built-in DNS (see the module docstring). Thread-safe; holds no open sockets."""

    def __init__(self, config: Optional[DnsConfig] = None, clock: Clock = time.monotonic,
                 query_timeout: float = QUERY_TIMEOUT, query_attempts: int = QUERY_ATTEMPTS):
        config = config or DnsConfig()
        self.config = config
        self._hosts: Tuple[HostMapping, ...] = config.hosts
        self._hosts_matcher = DomainMatcherGroup()
        for mapping in config.hosts:
            self._hosts_matcher.add(mapping.rule)
        servers = config.servers or (NameServerConfig(None),)
        self.clients = [self._client(s, clock, query_timeout, query_attempts) for s in servers]
        self._priority = DomainMatcherGroup()
        self._priority_owner: List[int] = []  # rule id -> index into self.clients
        for index, client in enumerate(self.clients):
            for rule in self._priority_rules(client.config):
                self._priority.add(rule)
                self._priority_owner.append(index)

    def _client(self, server: NameServerConfig, clock: Clock, timeout: float,
                attempts: int) -> NameServerClient:
        if server.address is None:
            return NameServerClient(server, LocalNameServer(), clock)
        client_ip = server.client_ip or self.config.client_ip
        udp = UdpNameServer(server.address.value, server.port, client_ip, timeout, attempts)
        return NameServerClient(server, udp, clock)

    def route_through(self, dial: Dial) -> None:
        """Send every UDP server's queries through ``dial`` (the Instance's dispatcher)."""
        for client in self.clients:
            if isinstance(client.server, UdpNameServer):
                client.server.dial = dial

    @staticmethod
    def _priority_rules(server: NameServerConfig) -> Tuple[DomainRule, ...]:
        return server.domains + (LOCAL_RESOLVER_DOMAINS if server.is_local else ())

    def lookup(self, domain: str, strategy: str = USE_IP,
               cached_only: bool = False) -> List[Address]:
        """The IPs for ``domain`` (IPv4 before IPv6), or ``TransportError``.
        ``cached_only``: the same answer when it is at hand (an IP, a hosts entry, the
        cache), or ``NeedsNetwork`` where ``lookup`` would ask a server."""
        want_ipv4, want_ipv6 = _strategy(strategy)
        name = domain[:-1] if domain.endswith(".") else domain  # dns.go strips the FQDN dot
        if not name:
            raise TransportError("cannot resolve an empty domain name")
        literal = Address.parse(name)
        if literal.is_ip:
            return _of_families([literal], want_ipv4, want_ipv6, name)
        hosted = self._lookup_hosts(name, want_ipv4, want_ipv6, MAX_REPLACEMENT_DEPTH)
        if hosted is not None:
            if len(hosted) == 1 and hosted[0].is_domain:
                log.debug("dns: domain replaced: %s -> %s", name, hosted[0])
                name = hosted[0].value
            else:
                return _of_families(hosted, want_ipv4, want_ipv6, name)
        return self._lookup_servers(name, want_ipv4, want_ipv6, cached_only)

    def _lookup_hosts(self, name: str, want_ipv4: bool, want_ipv6: bool,
                      depth: int) -> Optional[List[Address]]:
        """hosts.go ``lookup``: None = no entry; a lone domain = replacement; else the IPs."""
        found = [a for i in self._hosts_matcher.match(name) for a in self._hosts[i].addresses]
        if not found:
            return None
        if len(found) == 1 and found[0].is_domain:
            if depth > 0:
                unwrapped = self._lookup_hosts(found[0].value, want_ipv4, want_ipv6, depth - 1)
                if unwrapped is not None:
                    return unwrapped
            return found
        return [a for a in found if a.is_ip]

    def _lookup_servers(self, name: str, want_ipv4: bool, want_ipv6: bool,
                        cached_only: bool) -> List[Address]:
        skipped: List[str] = []
        for client in self.ordered_clients(name):
            try:
                found = client.query(name, want_ipv4, want_ipv6, cached_only)
            except _TryNext as e:
                log.info("dns: %s", e)
                skipped.append(str(e))
                continue
            log.debug("dns: %s -> %s from %s", name, found, client.name)
            return found
        raise TransportError(f"cannot resolve {name}: " + "; ".join(skipped))

    def ordered_clients(self, name: str) -> List[NameServerClient]:
        """dns.go ``sortClients``: servers whose ``domains`` match first, then the rest."""
        order: List[int] = []
        for rule_id in self._priority.match(name):
            owner = self._priority_owner[rule_id]
            if owner not in order:
                order.append(owner)
        order.extend(i for i in range(len(self.clients)) if i not in order)
        return [self.clients[i] for i in order]


def _strategy(strategy: str) -> Tuple[bool, bool]:
    try:
        return STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of "
                         f"{', '.join(STRATEGIES)}") from None


def _of_families(found: Sequence[Address], want_ipv4: bool, want_ipv6: bool,
                 name: str) -> List[Address]:
    kept = list(of_families(found, want_ipv4, want_ipv6))
    if not kept:
        raise DnsAnswerError(f"no address of the wanted family for {name}")
    return kept
