"""The ``routing`` section: JSON -> frozen ``RoutingConfig`` (``infra/conf/router.go`` in 4.34).

Everything a rule names is resolved here, at config time: ``geosite:``, ``geoip:`` and
``ext:`` lists are read from the .dat files, regular expressions are compiled once to check
them, so a bad rule fails the config load (as ``v2ray -test`` does) and the router only ever
sees plain patterns and merged IP ranges.

Where v2sync is stricter than 4.34, so that a mistake is never silently turned into a rule
that matches more or less than intended, the error says so:

- an unknown ``domainStrategy`` (4.34: treated as AsIs);
- both ``outboundTag`` and ``balancerTag`` set (4.34: outboundTag wins);
- an unknown ``network`` name, an empty or reversed ``port`` range (4.34: never matches);
- a geosite selection (``@attr`` filter) that leaves no domain (4.34 drops the domain
  condition, so the rule matches every domain);
- ``attrs`` (a Starlark expression over HTTP attributes), which v2sync does not implement;
- a duplicate balancer tag (4.34: the later one wins).

Keys are matched case-insensitively, exact spelling first, as Go's ``encoding/json`` does;
a ``null`` value counts as absent.
"""
from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass
from typing import (
    Any, Callable, Collection, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, TypeVar,
)

from v2sync.app.router.geodata import GEOIP_FILE, GEOSITE_FILE, PRIVATE_LIST, GeoData, SiteDomain
from v2sync.app.router.matchers import (
    Cidr, DomainKind, DomainPattern, IntRangeSet, IpSet, compile_regex, parse_cidr,
)
from v2sync.common.errors import ConfigError, ConfigErrors, join_path, shown

log = logging.getLogger(__name__)

T = TypeVar("T")

ROUTING_KEYS = ("domainStrategy", "rules", "balancers", "settings")
SETTINGS_KEYS = ("domainStrategy", "rules")
BALANCER_KEYS = ("tag", "selector")
RULE_KEYS = ("type", "outboundTag", "balancerTag", "domain", "domains", "ip", "port",
             "sourcePort", "network", "source", "user", "inboundTag", "protocol", "attrs")
RULE_TYPE_FIELD = "field"
NETWORK_NAMES = ("tcp", "udp", "unix")  # common.go Network.Build; "unix" never matches here
MAX_PORT = 65535

# Domain entry prefixes (parseDomainRule). ext-domain:/ext-ip: are the qualified spellings.
GEOSITE_PREFIX = "geosite:"
GEOIP_PREFIX = "geoip:"
EXT_PREFIX = "ext:"
EXT_DOMAIN_PREFIX = "ext-domain:"
EXT_IP_PREFIX = "ext-ip:"
DOTLESS_PREFIX = "dotless:"
SIMPLE_DOMAIN_PREFIXES = (("regexp:", DomainKind.REGEX), ("domain:", DomainKind.DOMAIN),
                          ("full:", DomainKind.FULL), ("keyword:", DomainKind.PLAIN))
ATTRIBUTE_SEPARATOR = "@"


class DomainStrategy(enum.Enum):
    """``Config.DomainStrategy``; 4.34's router treats UseIp ("AlwaysIP") like AsIs."""

    AS_IS = "AsIs"
    USE_IP = "AlwaysIP"
    IP_IF_NON_MATCH = "IPIfNonMatch"
    IP_ON_DEMAND = "IPOnDemand"


# getDomainStrategy() lower-cases the value and accepts these spellings.
_STRATEGY_NAMES = {
    "": DomainStrategy.AS_IS, "asis": DomainStrategy.AS_IS,
    "alwaysip": DomainStrategy.USE_IP, "always_ip": DomainStrategy.USE_IP,
    "always-ip": DomainStrategy.USE_IP,
    "ipifnonmatch": DomainStrategy.IP_IF_NON_MATCH, "ip_if_non_match": DomainStrategy.IP_IF_NON_MATCH,
    "ip-if-non-match": DomainStrategy.IP_IF_NON_MATCH,
    "ipondemand": DomainStrategy.IP_ON_DEMAND, "ip_on_demand": DomainStrategy.IP_ON_DEMAND,
    "ip-on-demand": DomainStrategy.IP_ON_DEMAND,
}


@dataclass(frozen=True)
class RoutingRule:
    """One ``field`` rule. ``None`` (or ``()`` for domains) means "no condition on this field";
    an empty set that is not None is a condition nothing satisfies (``"user": [""]``)."""

    path: str
    outbound_tag: str = ""
    balancer_tag: str = ""
    domains: Tuple[DomainPattern, ...] = ()
    ip: Optional[IpSet] = None
    ports: Optional[IntRangeSet] = None
    source_ports: Optional[IntRangeSet] = None
    networks: Optional[FrozenSet[str]] = None
    source: Optional[IpSet] = None
    users: Optional[FrozenSet[str]] = None
    inbound_tags: Optional[FrozenSet[str]] = None
    protocols: Optional[Tuple[str, ...]] = None


@dataclass(frozen=True)
class BalancerConfig:
    tag: str
    selectors: Tuple[str, ...]  # outbound tag prefixes


@dataclass(frozen=True)
class RoutingConfig:
    domain_strategy: DomainStrategy = DomainStrategy.AS_IS
    rules: Tuple[RoutingRule, ...] = ()
    balancers: Tuple[BalancerConfig, ...] = ()

    @classmethod
    def from_json(cls, raw: Optional[Mapping[str, Any]], path: str = "routing",
                  geodata: Optional[GeoData] = None) -> "RoutingConfig":
        return from_json(raw, path, geodata)


# --------------------------------------------------------------------------- JSON helpers

class _Collector:
    """Runs field parsers and keeps every ConfigError, so one pass reports them all."""

    def __init__(self) -> None:
        self.errors: List[ConfigError] = []

    def run(self, parse: Callable[..., T], *args: Any) -> Optional[T]:
        try:
            return parse(*args)
        except ConfigErrors as e:
            self.errors.extend(e.errors)
        except ConfigError as e:
            self.errors.append(e)
        return None

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)


def fold_keys(raw: Any, known: Sequence[str], path: str) -> Dict[str, Any]:
    """An object's known keys under their canonical spelling; later duplicates win."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{type(raw).__name__} is not an object", path, expected="expected an object")
    folded = {name.casefold(): name for name in known}
    result: Dict[str, Any] = {}
    for key, value in raw.items():
        name = key if key in known else folded.get(str(key).casefold())
        if name is None:
            log.warning("%s: unknown key %r ignored", join_path(path, str(key)), key)
        elif value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def string_list(value: Any, path: str) -> List[str]:
    """``StringList``: an array of strings, or one string split on commas (no trimming)."""
    if isinstance(value, str):
        return value.split(",")
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{type(value).__name__} is not a string list", path,
                          expected="expected an array of strings or a comma-separated string")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{shown(item)} is not a string", f"{path}[{i}]", expected="expected a string")
    return list(value)


def _entry_paths(values: List[str], path: str, raw: Any) -> List[Tuple[str, str]]:
    """Pair each list entry with its JSON path (a comma-separated string has one path)."""
    if isinstance(raw, str):
        return [(value, path) for value in values]
    return [(value, f"{path}[{i}]") for i, value in enumerate(values)]


# --------------------------------------------------------------------------- the section

def from_json(raw: Optional[Mapping[str, Any]], path: str = "routing",
              geodata: Optional[GeoData] = None) -> RoutingConfig:
    """Build the routing config; raise ConfigError (or ConfigErrors) located by JSON path."""
    if raw is None:
        return RoutingConfig()
    section = fold_keys(raw, ROUTING_KEYS, path)
    settings_path = join_path(path, "settings")
    settings = fold_keys(section.get("settings", {}), SETTINGS_KEYS, settings_path)
    errors = _Collector()
    strategy = errors.run(_strategy, section, settings, path, settings_path)
    balancers = errors.run(_balancers, section.get("balancers", []), join_path(path, "balancers"))
    balancer_tags = {b.tag for b in balancers or ()}
    data = geodata if geodata is not None else GeoData()
    rules: List[RoutingRule] = []
    # RouterConfig.Build: the top-level rules first, then the deprecated settings.rules.
    for items, items_path in ((section.get("rules", []), join_path(path, "rules")),
                              (settings.get("rules", []), join_path(settings_path, "rules"))):
        if not isinstance(items, (list, tuple)):
            errors.errors.append(ConfigError(f"{type(items).__name__} is not an array", items_path,
                                             expected="expected an array of rules"))
            continue
        for i, item in enumerate(items):
            rule = errors.run(parse_rule, item, f"{items_path}[{i}]", data, balancer_tags)
            if rule is not None:
                rules.append(rule)
    errors.raise_if_any()
    return RoutingConfig(strategy or DomainStrategy.AS_IS, tuple(rules), tuple(balancers or ()))


def _strategy(section: Mapping[str, Any], settings: Mapping[str, Any], path: str,
              settings_path: str) -> DomainStrategy:
    # The top-level domainStrategy wins over settings.domainStrategy when present.
    if "domainStrategy" in section:
        value, where = section["domainStrategy"], join_path(path, "domainStrategy")
    else:
        value, where = settings.get("domainStrategy", ""), join_path(settings_path, "domainStrategy")
    strategy = _STRATEGY_NAMES.get(value.lower()) if isinstance(value, str) else None
    if strategy is None:
        raise ConfigError(f"unknown domainStrategy {shown(value)}", where,
                          expected="expected AsIs, IPIfNonMatch, IPOnDemand or AlwaysIP")
    return strategy


def _balancers(raw: Any, path: str) -> List[BalancerConfig]:
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{type(raw).__name__} is not an array", path, expected="expected an array")
    errors = _Collector()
    balancers: List[BalancerConfig] = []
    seen: Dict[str, str] = {}
    for i, item in enumerate(raw):
        balancer = errors.run(_balancer, item, f"{path}[{i}]")
        if balancer is None:
            continue
        if balancer.tag in seen:
            message = f"duplicate balancer tag {balancer.tag!r} (also {seen[balancer.tag]})"
            errors.errors.append(ConfigError(message, f"{path}[{i}].tag"))
            continue
        seen[balancer.tag] = f"{path}[{i}]"
        balancers.append(balancer)
    errors.raise_if_any()
    return balancers


def _balancer(raw: Any, path: str) -> BalancerConfig:
    """``BalancingRule.Build``: a non-empty tag and a non-empty selector list."""
    item = fold_keys(raw, BALANCER_KEYS, path)
    tag = item.get("tag", "")
    if not isinstance(tag, str) or not tag:
        raise ConfigError("empty balancer tag", join_path(path, "tag"),
                          expected="expected a non-empty string")
    selectors = string_list(item.get("selector", []), join_path(path, "selector"))
    if not selectors:
        raise ConfigError("empty selector list", join_path(path, "selector"),
                          expected="expected outbound tag prefixes")
    return BalancerConfig(tag, tuple(selectors))


# --------------------------------------------------------------------------- rules

def parse_rule(raw: Any, path: str, geodata: GeoData, balancer_tags: Collection[str]) -> RoutingRule:
    """One rule (``ParseRule`` + ``parseFieldRule`` + ``BuildCondition``)."""
    item = fold_keys(raw, RULE_KEYS, path)
    kind = item.get("type", "")
    if not isinstance(kind, str) or kind.casefold() != RULE_TYPE_FIELD:
        raise ConfigError(f"unknown router rule type {shown(kind)}", join_path(path, "type"),
                          expected='expected "field"')
    if item.get("attrs"):
        raise ConfigError("routing rule 'attrs' is not supported by v2sync", join_path(path, "attrs"))
    errors = _Collector()
    outbound, balancer = errors.run(_targets, item, path, balancer_tags) or ("", "")
    fields = _Fields(item, path, geodata, errors)
    rule = RoutingRule(
        path=path, outbound_tag=outbound, balancer_tag=balancer,
        domains=fields.domains(),
        ip=fields.ips("ip"), source=fields.ips("source"),
        ports=fields.ports("port"), source_ports=fields.ports("sourcePort"),
        networks=fields.networks(),
        users=fields.names("user"), inbound_tags=fields.names("inboundTag"),
        protocols=fields.protocols(),
    )
    errors.raise_if_any()
    if not _has_condition(rule):
        raise ConfigError("this rule has no effective fields", path,
                          expected="expected at least one of domain, ip, port, sourcePort, network, "
                                   "source, user, inboundTag, protocol")
    return rule


def _targets(item: Mapping[str, Any], path: str, balancer_tags: Collection[str]) -> Tuple[str, str]:
    outbound, balancer = item.get("outboundTag", ""), item.get("balancerTag", "")
    for key, value in (("outboundTag", outbound), ("balancerTag", balancer)):
        if not isinstance(value, str):
            raise ConfigError(f"{shown(value)} is not a string", join_path(path, key),
                              expected="expected a tag")
    if outbound and balancer:
        raise ConfigError("a rule takes outboundTag or balancerTag, not both", path)
    if not outbound and not balancer:
        raise ConfigError("neither outboundTag nor balancerTag is specified in routing rule", path)
    if balancer and balancer not in balancer_tags:
        raise ConfigError(f"balancer {balancer!r} not found", join_path(path, "balancerTag"),
                          expected="expected the tag of an entry in routing.balancers")
    return outbound, balancer


def _has_condition(rule: RoutingRule) -> bool:
    return bool(rule.domains) or any(
        value is not None for value in (rule.ip, rule.ports, rule.source_ports, rule.networks,
                                        rule.source, rule.users, rule.inbound_tags, rule.protocols))


class _Fields:
    """Parses a rule's condition fields, recording errors instead of stopping at the first."""

    def __init__(self, item: Mapping[str, Any], path: str, geodata: GeoData, errors: _Collector):
        self.item, self.path, self.geodata, self.errors = item, path, geodata, errors

    def _list(self, key: str) -> Optional[List[Tuple[str, str]]]:
        if key not in self.item:
            return None
        where = join_path(self.path, key)
        values = self.errors.run(string_list, self.item[key], where)
        return None if values is None else _entry_paths(values, where, self.item[key])

    def domains(self) -> Tuple[DomainPattern, ...]:
        patterns: List[DomainPattern] = []
        for key in ("domain", "domains"):
            for text, where in self._list(key) or ():
                patterns.extend(self.errors.run(parse_domain_entry, text, where, self.geodata) or ())
        return tuple(patterns)

    def ips(self, key: str) -> Optional[IpSet]:
        entries = self._list(key)
        if not entries:  # absent or [] (toCidrList of nothing adds no condition)
            return None
        cidrs: List[Cidr] = []
        for text, where in entries:
            cidrs.extend(self.errors.run(parse_ip_entry, text, where, self.geodata) or ())
        return IpSet.from_cidrs(cidrs)

    def ports(self, key: str) -> Optional[IntRangeSet]:
        if key not in self.item:
            return None
        return self.errors.run(parse_port_list, self.item[key], join_path(self.path, key))

    def networks(self) -> Optional[FrozenSet[str]]:
        entries = self._list("network")
        if not entries:
            return None
        names = set()
        for text, where in entries:
            if text.lower() not in NETWORK_NAMES:
                self.errors.errors.append(ConfigError(f"unknown network {text!r}", where,
                                                      expected="expected tcp or udp"))
            names.add(text.lower())
        return frozenset(names)

    def names(self, key: str) -> Optional[FrozenSet[str]]:
        """``user`` / ``inboundTag``: exact strings; empty ones are dropped (NewUserMatcher)."""
        entries = self._list(key)
        if not entries:
            return None
        return frozenset(text for text, _ in entries if text)

    def protocols(self) -> Optional[Tuple[str, ...]]:
        entries = self._list("protocol")
        if not entries:
            return None
        return tuple(text for text, _ in entries if text)


# --------------------------------------------------------------------------- entries

def parse_domain_entry(text: str, path: str, geodata: GeoData) -> List[DomainPattern]:
    """One ``domain`` entry -> patterns (``parseDomainRule``)."""
    if text.startswith(GEOSITE_PREFIX):
        return geosite_patterns(geodata, GEOSITE_FILE, text[len(GEOSITE_PREFIX):], path)
    for prefix in (EXT_PREFIX, EXT_DOMAIN_PREFIX):
        if text.startswith(prefix):
            filename, name = _split_external(text, prefix, path)
            return geosite_patterns(geodata, filename, name, path)
    if text.startswith(DOTLESS_PREFIX):
        return [_dotless(text[len(DOTLESS_PREFIX):], path)]
    for prefix, kind in SIMPLE_DOMAIN_PREFIXES:
        if text.startswith(prefix):
            value = text[len(prefix):]
            if not value:
                raise ConfigError(f"empty value in domain rule {text!r}", path)
            pattern = DomainPattern(kind, value)
            if kind is DomainKind.REGEX:
                _check_regex(value, path, text)
            return [pattern]
    return [DomainPattern(DomainKind.PLAIN, text)]


def _dotless(substring: str, path: str) -> DomainPattern:
    """``dotless:`` is a regex on a name without dots; the substring is inserted as regex
    text, unescaped, exactly as router.go builds it."""
    if "." in substring:
        raise ConfigError(f"substr in dotless rule should not contain a dot: {substring!r}", path)
    value = "^[^.]*$" if not substring else "^[^.]*" + substring + "[^.]*$"
    _check_regex(value, path, DOTLESS_PREFIX + substring)
    return DomainPattern(DomainKind.REGEX, value)


def _check_regex(value: str, path: str, shown: str) -> None:
    try:
        compile_regex(value)
    except re.error as e:
        raise ConfigError(f"invalid regexp in {shown!r}: {e}", path,
                          expected="expected a regular expression (Go RE2 syntax, as v2ray)") from e


def _split_external(text: str, prefix: str, path: str) -> Tuple[str, str]:
    parts = text[len(prefix):].split(":")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ConfigError(f"invalid external resource: {text!r}", path,
                          expected=f"expected {prefix}file.dat:list")
    return parts[0], parts[1]


def geosite_patterns(geodata: GeoData, filename: str, spec: str, path: str) -> List[DomainPattern]:
    """``list[@attr...]`` from a geosite file (``loadGeositeWithAttr``): every attribute given
    must be present on a domain (keys compared case-insensitively) for it to be kept."""
    name, *attrs = spec.split(ATTRIBUTE_SEPARATOR)
    name = name.strip()
    if not name:
        raise ConfigError(f"empty list name in {spec!r}", path)
    wanted = [a.strip().casefold() for a in attrs if a.strip()]
    domains: List[SiteDomain] = geodata.geosite(filename, name, path)
    if wanted:
        domains = [d for d in domains if _has_attributes(d, wanted)]
    if not domains:
        raise ConfigError(f"{spec!r} selects no domains from {filename}", path,
                          expected="expected a list (and attributes) with at least one domain")
    patterns = []
    for domain in domains:
        if domain.kind is DomainKind.REGEX:
            _check_regex(domain.value, path, f"{filename}:{name}: {domain.value}")
        patterns.append(DomainPattern(domain.kind, domain.value))
    return patterns


def _has_attributes(domain: SiteDomain, wanted: Sequence[str]) -> bool:
    keys = {key.casefold() for key in domain.attributes}
    return all(attr in keys for attr in wanted)


def parse_ip_entry(text: str, path: str, geodata: GeoData) -> List[Cidr]:
    """One ``ip``/``source`` entry -> CIDRs (``toCidrList``)."""
    if text.startswith(GEOIP_PREFIX):
        country = text[len(GEOIP_PREFIX):]
        if not country:
            raise ConfigError("empty country name in rule", path, expected="expected geoip:code")
        if country.casefold() == PRIVATE_LIST:
            return geodata.private_cidrs(path)
        return geodata.geoip(GEOIP_FILE, country, path)
    for prefix in (EXT_PREFIX, EXT_IP_PREFIX):
        if text.startswith(prefix):
            filename, country = _split_external(text, prefix, path)
            return geodata.geoip(filename, country, path)
    return [parse_cidr(text, path)]


def parse_port_list(value: Any, path: str) -> IntRangeSet:
    """``PortList``: an integer, or ``"53,443,1000-2000"`` (items trimmed, empty ones skipped)."""
    expected = 'expected a port or a list like "53,443,1000-2000"'
    if isinstance(value, int) and not isinstance(value, bool):
        items = [str(value)] if value else []  # the number 0 adds no port (PortList.UnmarshalJSON)
    elif isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    else:
        raise ConfigError(f"invalid port: {shown(value)}", path, expected=expected)
    ranges = [_port_range(item, path, expected) for item in items]
    if not ranges:
        raise ConfigError(f"empty port list {value!r}", path, expected=expected)
    return IntRangeSet.from_ranges(ranges)


def _port_range(item: str, path: str, expected: str) -> Tuple[int, int]:
    first, dash, last = item.partition("-")
    ends = (first, last) if dash else (first, first)
    if not all(p.isascii() and p.isdigit() and int(p) <= MAX_PORT for p in ends):
        raise ConfigError(f"invalid port range: {item!r}", path, expected=expected)
    if not dash and first.startswith("0") and first != "0":
        # 4.34 reads a lone port as a JSON number, where a leading zero is invalid ("053");
        # a range's ends go through ParseUint, which takes it ("053-060")
        raise ConfigError(f"invalid port: {item!r} (a leading zero)", path, expected=expected)
    low, high = int(ends[0]), int(ends[1])
    if low > high:
        raise ConfigError(f"invalid port range: {item!r} (first > last)", path, expected=expected)
    return low, high
