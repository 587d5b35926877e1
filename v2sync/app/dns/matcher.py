"""Domain rules for the DNS app: parsing ``hosts`` keys and servers' ``domains`` entries, and a
matcher group that answers in v2ray's order.

Deliberately self-contained (the router has its own, faster matchers); DNS tables are small.
Semantics follow v2ray ``common/strmatcher``: ``full`` is equality, ``domain`` the name or any
subdomain, ``keyword`` a substring, ``regexp`` an unanchored search. Matching is
case-sensitive, as in 4.34.

The two config places read an unprefixed entry differently (4.34 ``infra/conf/dns.go`` vs
``router.go::parseDomainRule``): a plain ``hosts`` key is a *full* match, a plain ``domains``
entry a *keyword*. ``geosite:`` and ``ext:`` lists are expanded by the config
(``app.dns.config``), one rule per domain of the list, with the router's reader.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

from v2sync.common.errors import ConfigError
from v2sync.common.regexp import Searcher, compile_go

FULL = "full"
DOMAIN = "domain"
KEYWORD = "keyword"
REGEXP = "regexp"
KINDS = (FULL, DOMAIN, KEYWORD, REGEXP)

# Prefixes that carry a value, by how they read the rest of the string.
_PREFIXES = (("domain:", DOMAIN), ("full:", FULL), ("keyword:", KEYWORD), ("regexp:", REGEXP))
DOTLESS_PREFIX = "dotless:"
# 4.34 dns.go/router.go: "dotless:" alone matches names without a dot; "dotless:sub" matches
# dotless names containing sub.
_DOTLESS_ANY = "^[^.]*$"


@dataclass(frozen=True)
class DomainRule:
    kind: str  # one of KINDS
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def parse_domain_rule(text: str, plain_kind: str, path: str = "") -> DomainRule:
    """``"domain:example.com"`` -> ``DomainRule(DOMAIN, "example.com")``; an unprefixed entry
    becomes ``plain_kind``. Errors say what is wrong with which entry. (A geosite list is
    many rules: the config expands it before this.)"""
    if text.startswith(DOTLESS_PREFIX):
        return _dotless_rule(text[len(DOTLESS_PREFIX):], path)
    for prefix, kind in _PREFIXES:
        if text.startswith(prefix):
            value = text[len(prefix):]
            if not value:
                raise ConfigError(f"empty {kind} rule {text!r}", path)
            rule = DomainRule(kind, value)
            break
    else:
        rule = DomainRule(plain_kind, text)
    if rule.kind == REGEXP:
        _compile(rule.value, path)
    return rule


def _dotless_rule(sub: str, path: str) -> DomainRule:
    if "." in sub:
        raise ConfigError(f"substr in dotless rule should not contain a dot: {sub!r}", path)
    # Unescaped, as dns.go builds it: the rest is read as a Go regexp, as for routing.
    rule = DomainRule(REGEXP, "^[^.]*" + sub + "[^.]*$" if sub else _DOTLESS_ANY)
    _compile(rule.value, path)
    return rule


def _compile(pattern: str, path: str) -> Searcher:
    try:
        return compile_go(pattern)  # Go's syntax, as 4.34 reads hosts keys and domains
    except re.error as e:
        raise ConfigError(f"invalid regexp {pattern!r}: {e}", path) from e


@dataclass
class DomainMatcherGroup:
    """Rules added in order get ids 0, 1, 2...; ``match`` returns the ids of every matching
    rule in v2ray's ``MatcherGroup.Match`` order: full matches, then domain matches from the
    most specific suffix outwards, then keyword/regexp rules in the order they were added.
    Full and domain rules are looked up by hash, one probe per suffix of the name."""

    _full: Dict[str, List[int]] = field(default_factory=dict)
    _domain: Dict[str, List[int]] = field(default_factory=dict)
    _others: List[Tuple[int, Callable[[str], bool]]] = field(default_factory=list)
    _count: int = 0

    def add(self, rule: DomainRule) -> int:
        rule_id, self._count = self._count, self._count + 1
        if rule.kind == FULL:
            self._full.setdefault(rule.value, []).append(rule_id)
        elif rule.kind == DOMAIN:
            self._domain.setdefault(rule.value, []).append(rule_id)
        elif rule.kind == KEYWORD:
            self._others.append((rule_id, _keyword_test(rule.value)))
        elif rule.kind == REGEXP:
            self._others.append((rule_id, _regexp_test(rule.value)))
        else:
            raise ValueError(f"unknown domain rule kind {rule.kind!r}")
        return rule_id

    def __len__(self) -> int:
        return self._count

    def match(self, name: str) -> List[int]:
        found = list(self._full.get(name, ()))
        if self._domain:
            found.extend(self._suffix_matches(name))
        found.extend(rule_id for rule_id, test in self._others if test(name))
        return found

    def _suffix_matches(self, name: str) -> List[int]:
        found: List[int] = []
        start = 0
        while start >= 0:  # bounded: start moves right past one dot per turn
            found.extend(self._domain.get(name[start:], ()))
            dot = name.find(".", start)
            start = dot + 1 if dot >= 0 else -1
        return found


def _keyword_test(keyword: str) -> Callable[[str], bool]:
    return lambda name: keyword in name


def _regexp_test(pattern: str) -> Callable[[str], bool]:
    compiled = _compile(pattern, "")
    return lambda name: compiled.search(name) is not None
