"""A one-pattern-at-a-time domain matcher (strmatcher/matchers.go): the reference the
router's tables and decisions are checked against."""
from __future__ import annotations

import re

from v2sync.app.router.matchers import DomainKind, DomainPattern


def reference_match(pattern: DomainPattern, domain: str) -> bool:
    """Does ``pattern`` match ``domain``? A domain rule never sees "" (an IP target)."""
    if not domain:
        return False
    value = pattern.value
    if pattern.kind is DomainKind.FULL:
        return domain == value
    if pattern.kind is DomainKind.PLAIN:
        return value in domain
    if pattern.kind is DomainKind.DOMAIN:
        return domain.endswith(value) and (len(domain) == len(value) or domain[-len(value) - 1] == ".")
    return re.search(value, domain) is not None
