"""The router: a session's facts -> an outbound tag (``app/router/router.go`` in 4.34).

Semantics are 4.34's: a rule's conditions are ANDed, the values of one field ORed, the first
matching rule wins, and no match returns None (the dispatcher then uses the first outbound).

How a decision stays fast with tens of thousands of rules: rather than trying each rule, one
``DomainTable`` over every rule's domain patterns and one ``IpTable`` over every rule's CIDRs
say, in a few lookups, which rules' domain and IP conditions hold. The candidates are the
rules with neither condition plus those the tables returned; only they are walked, in order,
for their cheap checks (user, inbound tag, ports, network, source, protocol).

Domain strategies (``pickRouteInternal`` and ``features/routing/dns/context.go``):

- AsIs (and AlwaysIP, which 4.34's router does not distinguish): IP conditions only see an
  IP target;
- IPIfNonMatch: if no rule matched and the target is a domain, resolve it and try again;
- IPOnDemand: resolve the first time a rule's IP condition is evaluated, i.e. when a rule
  with an ``ip`` field is reached and its domain, user, inbound, port and network checks
  passed (4.34's condition order).

A name is resolved at most once per decision (4.34 retries a failed lookup at every IP rule;
v2sync does not). The answer travels back in ``RouteDecision.resolved`` so the dial can use
the same addresses.
"""
from __future__ import annotations

import heapq
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple, Union

from v2sync.app.router.config import DomainStrategy, RoutingConfig, RoutingRule
from v2sync.app.router.matchers import DomainTable, IpTable, address_key
from v2sync.common.errors import V2SyncError
from v2sync.common.net import Address, Destination
from v2sync.common.session import Session

log = logging.getLogger(__name__)

Resolver = Callable[[str], Sequence[Address]]
RESOLVING_STRATEGIES = (DomainStrategy.IP_IF_NON_MATCH, DomainStrategy.IP_ON_DEMAND)
Check = Callable[["_Facts"], bool]


@dataclass(frozen=True)
class RoutingContext:
    """What the router looks at (``features/routing/session/context.go``)."""

    inbound_tag: str = ""
    source: Optional[Destination] = None
    target: Optional[Destination] = None
    user_email: str = ""
    protocol: str = ""  # sniffed ("http1", "tls", "bittorrent") or "http/1.1" from the HTTP inbound

    @classmethod
    def from_session(cls, session: Session) -> "RoutingContext":
        return cls(session.inbound_tag, session.source, session.target, session.user_email,
                   session.protocol)


@dataclass(frozen=True)
class RouteDecision:
    """``tag`` None = no rule matched (or a balancer had no outbound): use the default.

    ``resolved`` is None when the router did not look the target up, else the addresses it
    got (possibly none); ``rule`` is the index of the matching rule in ``config.rules``.
    """

    tag: Optional[str]
    resolved: Optional[Tuple[Address, ...]] = None
    rule: Optional[int] = None


class _Facts:
    """The context's values in the form the checks want, computed once per decision."""

    __slots__ = ("inbound_tag", "user", "protocol", "network", "port", "source_port",
                 "source_key", "target_domain", "target_key")

    def __init__(self, ctx: RoutingContext, need_source: bool):
        self.inbound_tag = ctx.inbound_tag
        self.user = ctx.user_email
        self.protocol = ctx.protocol
        target, source = ctx.target, ctx.source
        self.source_port = source.port if source is not None else 0
        # Converting an address to an integer is the costliest fact: only when a rule needs it.
        self.source_key = address_key(source.address) if need_source and source is not None else None
        if target is None:  # no destination yet: port 0 and no network, as in session/context.go
            self.network, self.port, self.target_domain, self.target_key = "", 0, "", None
        else:
            self.network = target.network.value
            self.port = target.port
            self.target_domain = target.address.value if target.address.is_domain else ""
            self.target_key = address_key(target.address)


class _Rule:
    """A rule ready to run: its target and its cheap checks in 4.34's evaluation order."""

    __slots__ = ("index", "tag", "balancer", "has_domain", "has_ip", "before_ip", "after_ip")

    def __init__(self, index: int, rule: RoutingRule):
        self.index = index
        self.tag = rule.outbound_tag
        self.balancer = rule.balancer_tag
        self.has_domain = bool(rule.domains)
        self.has_ip = rule.ip is not None
        # BuildCondition order: domain, user, inboundTag, port, sourcePort, network, ip,
        # source ip, protocol. The domain and ip checks come from the shared tables.
        self.before_ip = tuple(_checks_before_ip(rule))
        self.after_ip = tuple(_checks_after_ip(rule))

    def passes(self, checks: Tuple[Check, ...], facts: _Facts) -> bool:
        for check in checks:
            if not check(facts):
                return False
        return True


def _checks_before_ip(rule: RoutingRule) -> Iterable[Check]:
    users, tags, ports, source_ports, networks = (rule.users, rule.inbound_tags, rule.ports,
                                                  rule.source_ports, rule.networks)
    if users is not None:
        yield lambda f: f.user in users
    if tags is not None:
        yield lambda f: f.inbound_tag in tags
    if ports is not None:
        yield lambda f: f.port in ports
    if source_ports is not None:
        yield lambda f: f.source_port in source_ports
    if networks is not None:
        yield lambda f: f.network in networks


def _checks_after_ip(rule: RoutingRule) -> Iterable[Check]:
    source, protocols = rule.source, rule.protocols
    if source is not None:
        yield lambda f: f.source_key is not None and source.contains_key(f.source_key)
    if protocols is not None:
        # ProtocolMatcher: a prefix match, so "http" matches "http1" and "http/1.1".
        yield lambda f: bool(f.protocol) and f.protocol.startswith(protocols)


class _Lookup:
    """The at-most-once name resolution of one decision."""

    __slots__ = ("resolved", "ip_hits")

    def __init__(self) -> None:
        self.resolved: Optional[Tuple[Address, ...]] = None
        self.ip_hits: FrozenSet[int] = frozenset()


class Router:
    """Implements ``features.routing.Router``; read-only after construction but for the
    balancers' selection, which is replaced whole, so thread-safe.

    ``resolve(name)`` returns a name's addresses (the DNS feature); None means no resolver,
    so IP conditions never see a domain target. ``outbound_tags`` are the outbounds, in
    order, for balancer selectors: a sequence, or a function giving the current ones (the
    API may remove an outbound, and 4.34's balancers select among those left at each pick);
    ``rng`` is anything with ``choice``.
    """

    def __init__(self, config: RoutingConfig, resolve: Optional[Resolver] = None,
                 rng: Any = random,
                 outbound_tags: Union[Sequence[str], Callable[[], Sequence[str]]] = ()):
        self.config = config
        self._resolver = resolve
        self._rng = rng
        self._strategy = config.domain_strategy
        self._rules = [_Rule(i, rule) for i, rule in enumerate(config.rules)]
        self._domains = DomainTable((p, i) for i, r in enumerate(config.rules) for p in r.domains)
        self._ips = IpTable((r.ip, i) for i, r in enumerate(config.rules) if r.ip is not None)
        self._plain = tuple(r.index for r in self._rules if not r.has_domain and not r.has_ip)
        self._ip_only = tuple(r.index for r in self._rules if r.has_ip and not r.has_domain)
        self._outbound_tags = outbound_tags if callable(outbound_tags) else (lambda: outbound_tags)
        # (the tags it was made from, each balancer's selection): one attribute, so a
        # reader never pairs one with the other's successor.
        self._selection: Tuple[Optional[Sequence[str]], Dict[str, Tuple[str, ...]]] = (None, {})
        self._balanced(self._outbound_tags())
        self._needs_source = any(rule.source is not None for rule in config.rules)
        if resolve is None and self._strategy in RESOLVING_STRATEGIES:
            log.warning("routing domainStrategy %s without a resolver: domains are never resolved",
                        self._strategy.value)

    # ------------------------------------------------------------------ public

    def pick_route(self, item: Union[Session, RoutingContext]) -> Optional[str]:
        """The outbound tag for a session or context; None = the default outbound."""
        return self.decide(item).tag

    def decide(self, item: Union[Session, RoutingContext]) -> RouteDecision:
        """The full decision: tag, the matching rule, and any addresses looked up."""
        ctx = item if isinstance(item, RoutingContext) else RoutingContext.from_session(item)
        facts = _Facts(ctx, self._needs_source)
        lookup = _Lookup()
        if not facts.target_domain:
            keys = [facts.target_key] if facts.target_key is not None else []
            index = self._walk(facts, self._candidates(set(), self._ips.match(keys)))
        elif self._strategy is DomainStrategy.IP_ON_DEMAND:
            index = self._on_demand(facts, self._domains.match(facts.target_domain), lookup)
        else:
            index = self._as_is_then_maybe_ip(facts, lookup)
        return self._decision(index, lookup.resolved)

    # ------------------------------------------------------------------ strategies

    def _as_is_then_maybe_ip(self, facts: _Facts, lookup: _Lookup) -> Optional[int]:
        domain_hits = self._domains.match(facts.target_domain)
        index = self._walk(facts, self._candidates(domain_hits, None))
        if index is not None or self._strategy is not DomainStrategy.IP_IF_NON_MATCH:
            return index
        # The second pass can resolve, but, as in 4.34, only once an ip condition is actually
        # evaluated; and only rules with one can newly match, since every other rule already
        # failed on facts a lookup does not change.
        return self._on_demand(facts, domain_hits, lookup, ip_rules_only=True)

    def _on_demand(self, facts: _Facts, domain_hits: Set[int], lookup: _Lookup,
                   ip_rules_only: bool = False) -> Optional[int]:
        """Walk until a rule's ip condition is reached (its earlier checks passed), resolve
        there, and finish the walk with the addresses known."""
        rules = self._rules
        if ip_rules_only:
            before = sorted(i for i in domain_hits if rules[i].has_ip)
        else:
            before = sorted(domain_hits.union(self._plain))
        for index in heapq.merge(before, self._ip_only):
            rule = rules[index]
            if not rule.passes(rule.before_ip, facts):
                continue
            if not rule.has_ip:
                if rule.passes(rule.after_ip, facts):
                    return index
                continue
            # The first ip condition evaluated: resolve, then go on with the addresses known.
            self._resolve(facts.target_domain, lookup)
            if ip_rules_only:
                rest = self._ip_candidates(domain_hits, lookup.ip_hits, index)
            else:
                rest = [i for i in self._candidates(domain_hits, lookup.ip_hits) if i >= index]
            return self._walk(facts, rest)
        return None

    # ------------------------------------------------------------------ helpers

    def _candidates(self, domain_hits: Set[int], ip_hits: Optional[FrozenSet[int]]) -> List[int]:
        """Rules whose domain and IP conditions hold, ascending. ``ip_hits`` None means no
        addresses are known, so no rule with an ip condition can match."""
        chosen = set(self._plain)
        rules = self._rules
        chosen.update(i for i in domain_hits if not rules[i].has_ip)
        if ip_hits:
            chosen.update(i for i in ip_hits if not rules[i].has_domain or i in domain_hits)
        return sorted(chosen)

    def _ip_candidates(self, domain_hits: Set[int], ip_hits: FrozenSet[int], start: int) -> List[int]:
        rules = self._rules
        return sorted(i for i in ip_hits if i >= start and (not rules[i].has_domain or i in domain_hits))

    def _walk(self, facts: _Facts, candidates: Iterable[int]) -> Optional[int]:
        rules = self._rules
        for index in candidates:
            rule = rules[index]
            if rule.passes(rule.before_ip, facts) and rule.passes(rule.after_ip, facts):
                return index
        return None

    def _resolve(self, domain: str, lookup: _Lookup) -> None:
        if lookup.resolved is not None or self._resolver is None:
            return
        lookup.resolved = ()
        try:
            answer = self._resolver(domain)
        except (V2SyncError, OSError) as e:  # as ResolvableContext: log, match no IP rule
            log.info("routing: failed to resolve %s: %s", domain, e)
            return
        lookup.resolved = tuple(a for a in answer if a.is_ip)
        keys = [address_key(a) for a in lookup.resolved]
        lookup.ip_hits = self._ips.match(k for k in keys if k is not None)

    def _decision(self, index: Optional[int], resolved: Optional[Tuple[Address, ...]]) -> RouteDecision:
        if index is None:
            return RouteDecision(None, resolved, None)
        rule = self._rules[index]
        if not rule.balancer:
            return RouteDecision(rule.tag, resolved, index)
        tags = self._balanced(self._outbound_tags()).get(rule.balancer, ())
        if not tags:  # Balancer.PickOutbound: "no available outbounds selected"
            log.warning("routing: balancer %s selects no outbound; using the default", rule.balancer)
            return RouteDecision(None, resolved, index)
        return RouteDecision(self._rng.choice(tags), resolved, index)

    def _balanced(self, outbound_tags: Sequence[str]) -> Dict[str, Tuple[str, ...]]:
        """Each balancer's outbounds among ``outbound_tags``, selected again when they
        changed (a new sequence: the outbound manager makes one at each change)."""
        seen, selected = self._selection
        if outbound_tags is not seen:
            selected = _select_outbounds(self.config, outbound_tags)
            self._selection = (outbound_tags, selected)
        return selected


def _select_outbounds(config: RoutingConfig, outbound_tags: Sequence[str]) -> Dict[str, Tuple[str, ...]]:
    """Each balancer's outbounds: the tags starting with any of its selectors
    (``outbound.Manager.Select``), in the order the outbounds are configured."""
    selected: Dict[str, Tuple[str, ...]] = {}
    for balancer in config.balancers:
        tags = tuple(tag for tag in dict.fromkeys(outbound_tags)
                     if tag and tag.startswith(balancer.selectors))
        if not tags:
            log.warning("routing: balancer %s: no outbound tag starts with %s", balancer.tag,
                        ", ".join(repr(s) for s in balancer.selectors))
        selected[balancer.tag] = tags
    return selected
