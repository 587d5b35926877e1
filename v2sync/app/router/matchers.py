"""Domain and IP matchers (v2ray ``common/strmatcher``, ``app/router/condition_geoip.go``).

Two kinds of object live here:

- single patterns and sets (``DomainPattern``, ``Cidr``, ``IntRangeSet``, ``IpSet``), which the
  frozen routing config holds;
- tables (``DomainTable``, ``IpTable``) that index many patterns, each tagged with an integer
  id (the router uses rule indices), and answer "which ids match?" without looking at each
  pattern in turn.

Costs per lookup: a full or ``domain:`` pattern is one dict lookup per label suffix of the
domain; all keywords share one Aho-Corasick automaton (one step per character of the domain);
CIDRs are merged into sorted integer ranges and found by ``bisect``. Regular expressions are
the exception: each is tried in turn (Python's ``re`` cannot tell which branch of a combined
alternation matched, and one pattern's inline flags would break the others).

Matching is case-sensitive, as in 4.34 (``strmatcher/matchers.go`` compares bytes).
"""
from __future__ import annotations

import bisect
import enum
import ipaddress
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

from v2sync.common.errors import ConfigError
from v2sync.common.net import Address, AddressKind
from v2sync.common.regexp import Searcher, compile_go

IPV4_BITS = 32
IPV6_BITS = 128
EMPTY_IDS: FrozenSet[int] = frozenset()


class DomainKind(enum.IntEnum):
    """How a domain pattern matches; the numbers are ``Domain.Type`` in ``app/router/config.proto``."""

    PLAIN = 0   # substring ("keyword:" and bare strings)
    REGEX = 1   # regular expression, searched anywhere in the domain
    DOMAIN = 2  # the domain itself or any subdomain of it
    FULL = 3    # exactly the domain


_KIND_PREFIX = {DomainKind.PLAIN: "keyword:", DomainKind.REGEX: "regexp:",
                DomainKind.DOMAIN: "domain:", DomainKind.FULL: "full:"}


def compile_regex(pattern: str) -> Searcher:
    """Compile a ``regexp:`` pattern in Go's RE2 syntax, as 4.34 does (``regexp.Compile``).

    ``v2sync.common.regexp.compile_go`` translates it (and runs it in linear time), so ``[[:alpha:]]``,
    ``\\z``, ``x{,2}`` and ``$`` mean what they mean to v2ray; patterns Go refuses
    (lookaround, backreferences, ``\\Z``) and the few Go accepts but v2sync cannot express
    exactly (``\\pL``, ``\\p{Greek}``) raise ``re.error``, which callers turn into config errors.
    Use ``.search``: a rule matches anywhere in the domain, as Go's ``MatchString``.
    """
    return compile_go(pattern)


@dataclass(frozen=True)
class DomainPattern:
    kind: DomainKind
    value: str

    def __str__(self) -> str:
        return _KIND_PREFIX[self.kind] + self.value


# --------------------------------------------------------------------------- keywords

class KeywordAutomaton:
    """Aho-Corasick over many keywords; ``search(text)`` returns the ids of every keyword found.

    A state is the keyword prefix read so far (a ``str``), so the trie is a set of strings plus
    a failure-link dict: far smaller than a dict per node for tens of thousands of keywords.
    """

    def __init__(self, keywords: Iterable[Tuple[str, int]]):
        own: Dict[str, Set[int]] = {}
        for word, ident in keywords:
            own.setdefault(word, set()).add(ident)
        # An empty keyword is a substring of every domain (strings.Contains(s, "") is true).
        self._always: FrozenSet[int] = frozenset(own.pop("", ()))
        self._prefixes: Set[str] = {word[:i] for word in own for i in range(len(word) + 1)}
        self._fail: Dict[str, str] = {"": ""}
        self._out: Dict[str, FrozenSet[int]] = {}
        for state in sorted(self._prefixes, key=len)[1:]:  # shortest first: parents are done
            self._fail[state] = self._failure_of(state)
            ids = own.get(state, set()) | self._out.get(self._fail[state], EMPTY_IDS)
            if ids:
                self._out[state] = frozenset(ids)

    def _failure_of(self, state: str) -> str:
        """The longest proper suffix of ``state`` that is also a prefix of some keyword."""
        if len(state) == 1:
            return ""
        char, fallback = state[-1], self._fail[state[:-1]]
        while fallback and fallback + char not in self._prefixes:
            fallback = self._fail[fallback]
        candidate = fallback + char
        return candidate if candidate in self._prefixes else ""

    def __bool__(self) -> bool:
        return bool(self._always or self._out)

    def search(self, text: str) -> Set[int]:
        found: Set[int] = set(self._always) if text else set()
        prefixes, fail, out = self._prefixes, self._fail, self._out
        state = ""
        for char in text:
            nxt = state + char
            while nxt not in prefixes:
                if not state:
                    nxt = ""
                    break
                state = fail[state]
                nxt = state + char
            state = nxt
            ids = out.get(state)
            if ids:
                found.update(ids)
        return found


# --------------------------------------------------------------------------- domains

class DomainTable:
    """Many domain patterns, each tagged with an id; ``match(domain)`` -> ids that match.

    The semantics are those of ``strmatcher.MatcherGroup`` in 4.34: ``full`` compares the
    whole string, ``domain`` matches the pattern itself or any name ending in ``"." + pattern``,
    ``plain`` is a substring test and ``regex`` an unanchored search.
    """

    def __init__(self, entries: Iterable[Tuple[DomainPattern, int]]):
        full: Dict[str, Set[int]] = {}
        suffix: Dict[str, Set[int]] = {}
        keywords: List[Tuple[str, int]] = []
        regexes: List[Tuple[Searcher, int]] = []
        for pattern, ident in entries:
            if pattern.kind is DomainKind.FULL:
                full.setdefault(pattern.value, set()).add(ident)
            elif pattern.kind is DomainKind.DOMAIN:
                suffix.setdefault(pattern.value, set()).add(ident)
            elif pattern.kind is DomainKind.PLAIN:
                keywords.append((pattern.value, ident))
            else:
                regexes.append((compile_regex(pattern.value), ident))
        self._full = {k: frozenset(v) for k, v in full.items()}
        self._suffix = {k: frozenset(v) for k, v in suffix.items()}
        self._keywords = KeywordAutomaton(keywords)
        self._regexes = tuple(regexes)

    def match(self, domain: str) -> Set[int]:
        """Ids of every pattern that matches ``domain`` (an empty domain matches nothing)."""
        if not domain:
            return set()
        found = self._keywords.search(domain) if self._keywords else set()
        hit = self._full.get(domain)
        if hit:
            found.update(hit)
        if self._suffix:
            found.update(self._suffix_ids(domain))
        for regex, ident in self._regexes:
            if ident not in found and regex.search(domain):
                found.add(ident)
        return found

    def _suffix_ids(self, domain: str) -> Set[int]:
        """``domain:`` hits: the name itself, then each suffix that follows a dot."""
        suffix = self._suffix
        found: Set[int] = set(suffix.get(domain, EMPTY_IDS))
        dot = domain.find(".")
        while dot >= 0:
            hit = suffix.get(domain[dot + 1:])
            if hit:
                found.update(hit)
            dot = domain.find(".", dot + 1)
        return found

    def matches_any(self, domain: str) -> bool:
        return bool(self.match(domain))


# --------------------------------------------------------------------------- IP ranges

@dataclass(frozen=True)
class IntRangeSet:
    """Disjoint, sorted, inclusive integer ranges; membership by ``bisect`` (ports, IPs)."""

    starts: Tuple[int, ...] = ()
    ends: Tuple[int, ...] = ()

    @classmethod
    def from_ranges(cls, ranges: Iterable[Tuple[int, int]]) -> "IntRangeSet":
        """Sort and merge overlapping or touching ``(first, last)`` ranges."""
        starts: List[int] = []
        ends: List[int] = []
        for first, last in sorted(ranges):
            if starts and first <= ends[-1] + 1:
                ends[-1] = max(ends[-1], last)
            else:
                starts.append(first)
                ends.append(last)
        return cls(tuple(starts), tuple(ends))

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        i = bisect.bisect_right(self.starts, value) - 1
        return i >= 0 and value <= self.ends[i]

    def __len__(self) -> int:
        """The number of merged ranges (not of integers)."""
        return len(self.starts)

    def ranges(self) -> List[Tuple[int, int]]:
        return list(zip(self.starts, self.ends))


@dataclass(frozen=True)
class Cidr:
    """An IP network as integers: ``version`` 4 or 6, ``value`` the address, ``prefix`` bits."""

    version: int
    value: int
    prefix: int

    @property
    def bits(self) -> int:
        return IPV4_BITS if self.version == 4 else IPV6_BITS

    def first_last(self) -> Tuple[int, int]:
        host_bits = self.bits - self.prefix
        first = (self.value >> host_bits) << host_bits  # normalize4/normalize6 in condition_geoip.go
        return first, first | ((1 << host_bits) - 1)

    @classmethod
    def from_packed(cls, raw: bytes, prefix: int) -> "Cidr":
        """A ``CIDR{ip, prefix}`` message from a .dat file; the caller checks the lengths."""
        version = 4 if len(raw) == 4 else 6
        return cls(version, int.from_bytes(raw, "big"), prefix)

    def __str__(self) -> str:
        if self.version == 4:
            return f"{ipaddress.IPv4Address(self.value)}/{self.prefix}"
        return f"{ipaddress.IPv6Address(self.value)}/{self.prefix}"


def parse_cidr(text: str, path: str = "") -> Cidr:
    """A rule's ``ip``/``source`` entry: ``a.b.c.d[/n]`` or ``v6[/n]`` (``ParseIP`` in
    ``infra/conf/router.go``). A missing or empty mask means a single address; an IPv4-mapped
    IPv6 address counts as IPv4, as ``net.ParseAddress`` makes it."""
    address, _, mask = text.partition("/")
    parsed = Address.parse(address.strip())
    if parsed.kind is AddressKind.DOMAIN or "%" in address:
        raise ConfigError(f"unsupported address for router: {text!r}", path,
                          expected="expected an IP, a CIDR, geoip:code or ext:file:code")
    bits = IPV4_BITS if parsed.kind is AddressKind.IPV4 else IPV6_BITS
    if not mask:
        prefix = bits
    elif mask.isascii() and mask.isdigit() and int(mask) <= bits:
        prefix = int(mask)
    else:
        raise ConfigError(f"invalid network mask for router: {mask!r} in {text!r}", path,
                          expected=f"expected 0-{bits}")
    ip = parsed.ip()
    return Cidr(ip.version, int(ip), prefix)


def address_key(address: Address) -> Optional[Tuple[int, int]]:
    """``(version, integer)`` of an IP address; None for a domain."""
    if not address.is_ip:
        return None
    ip = ipaddress.ip_address(address.value)
    return ip.version, int(ip)


@dataclass(frozen=True, repr=False)
class IpSet:
    """A union of CIDRs, kept as merged ranges per family. IPv4 addresses only match IPv4
    CIDRs and IPv6 only IPv6, as ``GeoIPMatcher`` keeps the two apart."""

    v4: IntRangeSet = IntRangeSet()
    v6: IntRangeSet = IntRangeSet()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[Cidr]) -> "IpSet":
        v4: List[Tuple[int, int]] = []
        v6: List[Tuple[int, int]] = []
        for cidr in cidrs:
            (v4 if cidr.version == 4 else v6).append(cidr.first_last())
        return cls(IntRangeSet.from_ranges(v4), IntRangeSet.from_ranges(v6))

    def contains_key(self, key: Tuple[int, int]) -> bool:
        version, value = key
        return value in (self.v4 if version == 4 else self.v6)

    def contains(self, address: Address) -> bool:
        key = address_key(address)
        return key is not None and self.contains_key(key)

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)

    def __repr__(self) -> str:
        return f"IpSet({len(self.v4)} IPv4 ranges, {len(self.v6)} IPv6 ranges)"


class IpTable:
    """Many ``IpSet``s, each tagged with an id; ``match(keys)`` -> ids whose set holds any key.

    Built by a sweep over every range boundary: the number line of each family is cut into
    elementary segments, each knowing the ids that cover it, so a lookup is one ``bisect``
    whatever the number of sets. Identical id sets are shared between segments.
    """

    def __init__(self, entries: Iterable[Tuple[IpSet, int]]):
        events: Dict[int, List[Tuple[int, int, int]]] = {4: [], 6: []}
        for ipset, ident in entries:
            for version, ranges in ((4, ipset.v4), (6, ipset.v6)):
                for first, last in ranges.ranges():
                    events[version].append((first, 1, ident))
                    events[version].append((last + 1, -1, ident))
        self._bounds: Dict[int, List[int]] = {}
        self._owners: Dict[int, List[FrozenSet[int]]] = {}
        for version, family_events in events.items():
            self._bounds[version], self._owners[version] = _sweep(family_events)

    def match(self, keys: Iterable[Tuple[int, int]]) -> FrozenSet[int]:
        found: Set[int] = set()
        for version, value in keys:
            bounds = self._bounds[version]
            i = bisect.bisect_right(bounds, value) - 1
            if i >= 0:
                found.update(self._owners[version][i])
        return frozenset(found)


def _sweep(events: List[Tuple[int, int, int]]) -> Tuple[List[int], List[FrozenSet[int]]]:
    """Elementary segments from (position, +1/-1, id) events: segment i covers
    ``[bounds[i], bounds[i + 1])`` and is owned by ``owners[i]``."""
    events.sort()
    active: Dict[int, int] = {}  # id -> how many of its ranges cover the current point
    interned: Dict[FrozenSet[int], FrozenSet[int]] = {}
    bounds: List[int] = []
    owners: List[FrozenSet[int]] = []
    i = 0
    while i < len(events):
        position = events[i][0]
        while i < len(events) and events[i][0] == position:
            _, delta, ident = events[i]
            count = active.get(ident, 0) + delta
            if count:
                active[ident] = count
            else:
                active.pop(ident, None)
            i += 1
        ids = frozenset(active)
        ids = interned.setdefault(ids, ids)
        if owners and owners[-1] is ids:
            continue  # the same owners as the previous segment: extend it
        bounds.append(position)
        owners.append(ids)
    return bounds, owners

