"""Domain tables, the keyword automaton, CIDR parsing, range sets and IP tables."""
from __future__ import annotations

import ipaddress
from typing import List, Set, Tuple

import pytest
from hypothesis import given, settings, strategies as st

from v2sync.app.router.matchers import (
    Cidr, DomainKind, DomainPattern, DomainTable, IntRangeSet, IpSet, IpTable, KeywordAutomaton,
    address_key, parse_cidr,
)
from v2sync.common.errors import ConfigError
from v2sync.common.net import Address

from app.router.router_reference import reference_match

# --------------------------------------------------------------------------- references

def reference_ids(entries: List[Tuple[DomainPattern, int]], domain: str) -> Set[int]:
    return {ident for pattern, ident in entries if reference_match(pattern, domain)}


# --------------------------------------------------------------------------- domains

def table(*patterns: str) -> DomainTable:
    kinds = {"full": DomainKind.FULL, "domain": DomainKind.DOMAIN, "keyword": DomainKind.PLAIN,
             "regexp": DomainKind.REGEX}
    entries = []
    for i, text in enumerate(patterns):
        kind, _, value = text.partition(":")
        entries.append((DomainPattern(kinds[kind], value), i))
    return DomainTable(entries)


def test_domain_matches_itself_and_subdomains_only() -> None:
    t = table("domain:example.com")
    assert t.match("example.com") == {0}
    assert t.match("a.b.example.com") == {0}
    assert t.match("badexample.com") == set()
    assert t.match("example.com.evil") == set()
    assert t.match("com") == set()


def test_full_is_exact_and_case_sensitive() -> None:
    t = table("full:www.example.com")
    assert t.match("www.example.com") == {0}
    assert t.match("a.www.example.com") == set()
    assert t.match("WWW.example.com") == set()


def test_keywords_and_regexes_search_anywhere() -> None:
    t = table("keyword:goo", "keyword:ogle", "regexp:^ads?[0-9]", "regexp:\\.cn$")
    assert t.match("www.google.com") == {0, 1}
    assert t.match("ad1.example") == {2}
    assert t.match("x.ads9") == set()
    assert t.match("baidu.cn") == {3}


def test_every_pattern_kind_reports_its_own_id() -> None:
    t = table("full:a.example", "domain:example", "keyword:exa", "regexp:^a\\.")
    assert t.match("a.example") == {0, 1, 2, 3}
    assert t.matches_any("b.example") and not t.matches_any("nothing.test")


def test_empty_domain_matches_nothing_even_an_empty_keyword() -> None:
    t = DomainTable([(DomainPattern(DomainKind.PLAIN, ""), 7)])
    assert t.match("") == set()
    assert t.match("anything") == {7}


def test_keyword_automaton_finds_overlapping_keywords() -> None:
    automaton = KeywordAutomaton([("he", 1), ("she", 2), ("his", 3), ("hers", 4), ("x", 5)])
    assert automaton.search("ushers") == {1, 2, 4}
    assert automaton.search("ahishers") == {1, 2, 3, 4}
    assert automaton.search("") == set()
    assert not KeywordAutomaton([])


ALPHABET = "ab.-"
REGEXES = ["^a", "b$", r"a\.b", "^[^.]*$", "(?i)A.B", "a{2,}"]


@st.composite
def patterns(draw: st.DrawFn) -> DomainPattern:
    kind = draw(st.sampled_from(list(DomainKind)))
    if kind is DomainKind.REGEX:
        return DomainPattern(kind, draw(st.sampled_from(REGEXES)))
    return DomainPattern(kind, draw(st.text(ALPHABET, min_size=0, max_size=6)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(patterns(), st.integers(0, 20)), max_size=25),
       st.lists(st.text(ALPHABET, max_size=10), min_size=1, max_size=8))
def test_domain_table_agrees_with_the_naive_matcher(entries: List[Tuple[DomainPattern, int]],
                                                    domains: List[str]) -> None:
    t = DomainTable(entries)
    for domain in domains:
        assert t.match(domain) == reference_ids(entries, domain), domain


# --------------------------------------------------------------------------- CIDRs

@pytest.mark.parametrize("text, version, prefix", [
    ("1.2.3.4", 4, 32), ("1.2.3.4/", 4, 32), ("10.0.0.0/8", 4, 8), ("::1", 6, 128),
    ("2001:db8::/32", 6, 32), ("::ffff:192.0.2.0/24", 4, 24), ("[2001:db8::1]", 6, 128),
])
def test_parse_cidr_accepts_ips_and_networks(text: str, version: int, prefix: int) -> None:
    cidr = parse_cidr(text)
    assert (cidr.version, cidr.prefix) == (version, prefix)


@pytest.mark.parametrize("text", ["example.com", "1.2.3.4/33", "::1/129", "1.2.3.4/+5", "1.2.3.4/x",
                                  "fe80::1%eth0", "", "1.2.3/8"])
def test_parse_cidr_rejects_bad_entries_with_the_path(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_cidr(text, "routing.rules[0].ip[1]")
    assert caught.value.path == "routing.rules[0].ip[1]"


def test_cidr_range_ignores_host_bits() -> None:
    assert parse_cidr("10.1.2.3/8").first_last() == (0x0A000000, 0x0AFFFFFF)
    assert str(parse_cidr("10.1.2.3/8")) == "10.1.2.3/8"
    assert Cidr(4, 0, 0).first_last() == (0, 2**32 - 1)


def test_int_range_set_merges_and_bisects() -> None:
    ranges = IntRangeSet.from_ranges([(53, 53), (1000, 2000), (54, 60), (1500, 2500)])
    assert ranges.ranges() == [(53, 60), (1000, 2500)]
    assert all(p in ranges for p in (53, 60, 1000, 2500))
    assert not any(p in ranges for p in (52, 61, 999, 2501, "53", None))


def test_ip_set_keeps_families_apart() -> None:
    ips = IpSet.from_cidrs([parse_cidr("0.0.0.0/0")])
    assert ips.contains(Address.parse("8.8.8.8"))
    assert not ips.contains(Address.parse("::1"))
    assert not ips.contains(Address.parse("example.com"))
    assert "1 IPv4 ranges" in repr(ips)


V4_CIDRS = st.builds(lambda v, p: Cidr(4, v, p), st.integers(0, 2**32 - 1), st.integers(0, 32))
V6_CIDRS = st.builds(lambda v, p: Cidr(6, v, p),
                     st.integers(0, 2**128 - 1) | st.integers(0, 2**16), st.integers(0, 128))


def network_of(cidr: Cidr) -> "ipaddress.IPv4Network | ipaddress.IPv6Network":
    if cidr.version == 4:
        return ipaddress.IPv4Network((cidr.value, cidr.prefix), strict=False)
    return ipaddress.IPv6Network((cidr.value, cidr.prefix), strict=False)


def probes(cidrs: List[Cidr], extra: List[int]) -> List[Address]:
    """Addresses at and next to every range edge, plus random ones."""
    out = []
    for cidr in cidrs:
        first, last = cidr.first_last()
        top = 2**cidr.bits - 1
        for value in (first - 1, first, last, last + 1):
            if 0 <= value <= top:
                out.append(Address.parse(str(ipaddress.ip_address(value) if cidr.version == 4
                                             else ipaddress.IPv6Address(value))))
    out.extend(Address.parse(str(ipaddress.IPv4Address(v % 2**32))) for v in extra)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(V4_CIDRS | V6_CIDRS, max_size=12), st.lists(st.integers(0, 2**32 - 1), max_size=5))
def test_ip_set_agrees_with_ipaddress(cidrs: List[Cidr], extra: List[int]) -> None:
    ips = IpSet.from_cidrs(cidrs)
    for address in probes(cidrs, extra):
        expected = any(address.ip() in network_of(c) for c in cidrs if c.version == address.ip().version)
        assert ips.contains(address) == expected, address


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(V4_CIDRS | V6_CIDRS, max_size=4), max_size=8),
       st.lists(st.integers(0, 2**32 - 1), max_size=5))
def test_ip_table_agrees_with_each_set(groups: List[List[Cidr]], extra: List[int]) -> None:
    sets = [IpSet.from_cidrs(group) for group in groups]
    index = IpTable((s, i) for i, s in enumerate(sets))
    for address in probes([c for g in groups for c in g], extra):
        key = address_key(address)
        assert key is not None
        assert index.match([key]) == {i for i, s in enumerate(sets) if s.contains(address)}, address


def test_ip_table_unions_several_addresses() -> None:
    index = IpTable([(IpSet.from_cidrs([parse_cidr("10.0.0.0/8")]), 1),
                     (IpSet.from_cidrs([parse_cidr("2001:db8::/32")]), 2),
                     (IpSet.from_cidrs([parse_cidr("10.1.0.0/16"), parse_cidr("::/0")]), 3)])
    keys = [address_key(Address.parse(a)) for a in ("10.1.2.3", "2001:db8::1")]
    assert index.match([k for k in keys if k]) == {1, 2, 3}
    assert index.match([]) == frozenset()
