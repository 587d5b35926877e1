"""DNS domain rules: prefixes, the two readings of a plain entry, and v2ray's match order."""
from __future__ import annotations

import pytest

from v2sync.app.dns.matcher import (DOMAIN, FULL, KEYWORD, REGEXP, DomainMatcherGroup,
                                    DomainRule, parse_domain_rule)
from v2sync.common.errors import ConfigError


@pytest.mark.parametrize("text, plain, expected", [
    ("domain:example.com", KEYWORD, DomainRule(DOMAIN, "example.com")),
    ("full:a.example.com", KEYWORD, DomainRule(FULL, "a.example.com")),
    ("keyword:goo", FULL, DomainRule(KEYWORD, "goo")),
    ("regexp:^a+\\.test$", FULL, DomainRule(REGEXP, "^a+\\.test$")),
    ("example.com", FULL, DomainRule(FULL, "example.com")),  # hosts: plain = full
    ("example.com", KEYWORD, DomainRule(KEYWORD, "example.com")),  # domains: plain = keyword
    ("dotless:", FULL, DomainRule(REGEXP, "^[^.]*$")),
    ("dotless:intra", FULL, DomainRule(REGEXP, "^[^.]*intra[^.]*$")),
])
def test_parse_domain_rule(text: str, plain: str, expected: DomainRule) -> None:
    assert parse_domain_rule(text, plain) == expected


@pytest.mark.parametrize("text, message", [
    ("domain:", "empty domain rule"),
    ("regexp:(", "invalid regexp"),
    ("dotless:a.b", "should not contain a dot"),
])
def test_parse_domain_rule_errors_carry_the_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_domain_rule(text, KEYWORD, "dns.servers[0].domains[3]")
    assert message in info.value.message
    assert info.value.path == "dns.servers[0].domains[3]"


def _group(*rules: DomainRule) -> DomainMatcherGroup:
    group = DomainMatcherGroup()
    for rule in rules:
        group.add(rule)
    return group


def test_domain_rule_matches_itself_and_subdomains_on_label_boundaries() -> None:
    group = _group(DomainRule(DOMAIN, "example.com"))
    assert group.match("example.com") == [0]
    assert group.match("a.b.example.com") == [0]
    assert group.match("badexample.com") == []
    assert group.match("example.com.evil") == []


def test_keyword_regexp_and_case_sensitivity() -> None:
    group = _group(DomainRule(KEYWORD, "goo"), DomainRule(REGEXP, "\\.cn$"))
    assert group.match("www.google.com") == [0]
    assert group.match("a.cn") == [1]  # regexp is an unanchored search
    assert group.match("WWW.GOOGLE.COM") == []  # 4.34 matchers are case-sensitive


def test_match_order_is_full_then_most_specific_domain_then_others() -> None:
    group = _group(
        DomainRule(KEYWORD, "example"),      # 0
        DomainRule(DOMAIN, "example.com"),   # 1
        DomainRule(FULL, "a.example.com"),   # 2
        DomainRule(DOMAIN, "a.example.com"),  # 3
        DomainRule(REGEXP, "^a\\."),         # 4
    )
    assert group.match("a.example.com") == [2, 3, 1, 0, 4]
    assert len(group) == 5
