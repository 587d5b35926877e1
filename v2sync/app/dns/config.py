"""The ``dns`` section (v2ray 4.34 ``infra/conf/dns.go``) as frozen dataclasses.

Accepted, as 4.34 accepts them::

    "dns": {
      "servers": ["localhost", "8.8.8.8", "dns.example",
                  {"address": "1.1.1.1", "port": 53, "domains": ["domain:example.com"],
                   "expectIps": ["1.0.0.0/8"], "clientIp": "1.2.3.4"}],
      "hosts": {"full:a.example": "10.0.0.1", "domain:b.example": "a.example", "c": "::1"},
      "clientIp": "5.6.7.8",
      "tag": "dns-out"
    }

4.34 has no other keys (``disableCache``, ``queryStrategy`` and friends came later). A server
string is ``"localhost"`` (the system resolver) or an IP or domain (plain UDP, port 53);
4.34 rejects ``"ip:port"`` strings (``url.Parse`` fails), so we do too and point at the
object form. DoH and DoQ URLs are refused with a clear message for now. Keys are matched
case-insensitively, as Go's ``encoding/json`` does.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from v2sync.app.dns.matcher import (DOMAIN, FULL, KEYWORD, REGEXP, DomainRule,
                                    parse_domain_rule)
from v2sync.app.router.config import parse_domain_entry, parse_ip_entry
from v2sync.app.router.geodata import GeoData
from v2sync.app.router.matchers import Cidr, DomainKind
from v2sync.common.errors import ConfigError, ConfigErrors, join_path, shown
from v2sync.common.net import Address, AddressKind, go_address
from v2sync.infra.conf.fields import MAX_UINT16
from v2sync.infra.conf.loader import string_list

log = logging.getLogger(__name__)

LOCALHOST = "localhost"  # the server name 4.34 maps to the system resolver (nameserver.go)
DEFAULT_DNS_PORT = 53  # nameserver_udp.go: port 0 means 53
UNSUPPORTED_URL_SCHEMES = ("https://", "https+local://", "quic+local://")
DOH_UNSUPPORTED = "DoH/DoQ servers are not supported by v2sync yet"
SERVER_KEYS = ("address", "port", "domains", "expectIps", "clientIp")
GEOIP_PREFIXES = ("geoip:", "ext:", "ext-ip:")
GEOSITE_PREFIXES = ("geosite:", "ext:", "ext-domain:")  # servers' domains: router.go's parser
HOSTS_GEO_PREFIXES = ("geosite:", "ext:")  # dns.go reads "ext-domain:" in hosts as a plain name
# dns.go typeMap: how a geosite list's domain types read as DNS rules.
GEOSITE_KINDS = {DomainKind.PLAIN: KEYWORD, DomainKind.REGEX: REGEXP,
                 DomainKind.DOMAIN: DOMAIN, DomainKind.FULL: FULL}
SERVER_EXPECTED = ('expected "localhost", an IP address, a domain, or '
                   '{"address", "port", "domains", "expectIps", "clientIp"}')



@dataclass(frozen=True)
class NameServerConfig:
    """One entry of ``servers``. ``address`` None is the system resolver ("localhost")."""

    address: Optional[Address]
    port: int = DEFAULT_DNS_PORT
    domains: Tuple[DomainRule, ...] = ()  # names to send to this server first
    expect_ips: Tuple[Cidr, ...] = ()  # answers outside these are discarded
    client_ip: Optional[Address] = None  # overrides the section's clientIp

    @property
    def is_local(self) -> bool:
        return self.address is None

    @property
    def name(self) -> str:
        """As 4.34 logs it: ``localhost`` or ``UDP:8.8.8.8:53``."""
        if self.address is None:
            return LOCALHOST
        host = f"[{self.address}]" if self.address.kind is AddressKind.IPV6 else self.address.value
        return f"UDP:{host}:{self.port}"


@dataclass(frozen=True)
class HostMapping:
    """A ``hosts`` entry: IP answers, or exactly one domain (a replacement name)."""

    rule: DomainRule
    addresses: Tuple[Address, ...]

    @property
    def replacement(self) -> Optional[str]:
        first = self.addresses[0] if len(self.addresses) == 1 else None
        return first.value if first is not None and first.is_domain else None


@dataclass(frozen=True)
class DnsConfig:
    servers: Tuple[NameServerConfig, ...] = ()
    hosts: Tuple[HostMapping, ...] = ()
    client_ip: Optional[Address] = None
    tag: str = ""

    @classmethod
    def from_json(cls, raw: Optional[Mapping[str, Any]], path: str = "dns",
                  geodata: Optional[GeoData] = None) -> "DnsConfig":
        """Build from the raw section; every problem found is reported (ConfigErrors).
        ``geosite:``/``geoip:``/``ext:`` lists are read from ``geodata`` (the routing's, so
        each file is read once)."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{type(raw).__name__} is not an object", path,
                              expected="expected an object")
        data = geodata if geodata is not None else GeoData()
        errors: List[ConfigError] = []
        servers = _collect(errors, _servers, lookup(raw, "servers"), join_path(path, "servers"),
                           data)
        hosts = _collect(errors, _hosts, lookup(raw, "hosts"), join_path(path, "hosts"), data)
        client_ip = _collect(errors, _client_ip, lookup(raw, "clientIp"),
                             join_path(path, "clientIp"))
        tag = _collect(errors, _optional_string, lookup(raw, "tag"), join_path(path, "tag"))
        if errors:
            raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
        return cls(servers=servers or (), hosts=hosts or (), client_ip=client_ip, tag=tag or "")


def lookup(obj: Mapping[str, Any], key: str) -> Any:
    """``obj[key]`` matched as Go matches JSON keys: exact first, then case-insensitively."""
    if key in obj:
        return obj[key]
    folded = key.casefold()
    for name, value in obj.items():
        if isinstance(name, str) and name.casefold() == folded:
            return value
    return None


def _collect(errors: List[ConfigError], build: Any, value: Any, path: str, *extra: Any) -> Any:
    try:
        return build(value, path, *extra)
    except ConfigErrors as e:
        errors.extend(e.errors)
    except ConfigError as e:
        errors.append(e)
    return None


# ---------------------------------------------------------------- servers


def _servers(value: Any, path: str, geodata: GeoData) -> Tuple[NameServerConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{type(value).__name__} is not an array", path,
                          expected="expected an array of servers")
    errors: List[ConfigError] = []
    servers = [_collect(errors, _server, item, f"{path}[{i}]", geodata)
               for i, item in enumerate(value)]
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return tuple(servers)


def _server(value: Any, path: str, geodata: GeoData) -> NameServerConfig:
    if isinstance(value, str):
        return NameServerConfig(_server_address(value, path))
    if not isinstance(value, Mapping):
        raise ConfigError(f"invalid name server {shown(value)}", path, expected=SERVER_EXPECTED)
    _warn_unknown_keys(value, path)
    raw_address = lookup(value, "address")
    if raw_address is None:  # dns.go: "NameServer address is not specified."
        raise ConfigError("name server address is not specified", join_path(path, "address"),
                          expected=SERVER_EXPECTED)
    address = _server_address(_string(raw_address, join_path(path, "address")),
                              join_path(path, "address"))
    port = _port(lookup(value, "port"), join_path(path, "port"))
    return NameServerConfig(
        address=address,
        port=port or DEFAULT_DNS_PORT,
        domains=_domains(lookup(value, "domains"), join_path(path, "domains"), geodata),
        expect_ips=_expect_ips(lookup(value, "expectIps"), join_path(path, "expectIps"),
                               geodata),
        client_ip=_client_ip(lookup(value, "clientIp"), join_path(path, "clientIp")),
    )


def _server_address(text: str, path: str) -> Optional[Address]:
    if text == LOCALHOST:
        return None
    if text.startswith(UNSUPPORTED_URL_SCHEMES):
        raise ConfigError(f"{DOH_UNSUPPORTED}: {text!r}", path,
                          expected="use a plain UDP server (an IP address) or \"localhost\"")
    if "://" in text:
        raise ConfigError(f"unknown name server URL {text!r}", path, expected=SERVER_EXPECTED)
    address = go_address(text)
    if address.is_domain and (":" in text or not text):
        # 4.34 hands "1.2.3.4:53" to url.Parse, which refuses it; the port has its own key.
        raise ConfigError(f"invalid name server address {text!r}", path,
                          expected='a port goes in the object form: {"address": ..., "port": ...}')
    return address


def _port(value: Any, path: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UINT16:
        raise ConfigError(f"invalid port {shown(value)}", path, expected="expected an integer 0-65535")
    return value


def _domains(value: Any, path: str, geodata: GeoData) -> Tuple[DomainRule, ...]:
    # dns.go declares Domains []string: an array only, unlike the StringList of expectIps.
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"invalid domains {shown(value)}", path,
                          expected="expected an array of strings")
    return tuple(rule for i, text in enumerate(value)
                 for rule in _domain_rules(text, KEYWORD, f"{path}[{i}]", geodata,
                                           GEOSITE_PREFIXES))


def _domain_rules(text: str, plain_kind: str, path: str, geodata: GeoData,
                  geo_prefixes: Tuple[str, ...]) -> List[DomainRule]:
    """One entry's rules: a geosite list (``geosite:name[@attr]``, ``ext:file:name``) gives
    one per domain, its types read as dns.go's typeMap reads them; else the one rule."""
    if not text.startswith(geo_prefixes):
        return [parse_domain_rule(text, plain_kind, path)]
    return [DomainRule(GEOSITE_KINDS[pattern.kind], pattern.value)
            for pattern in parse_domain_entry(text, path, geodata)]


def _expect_ips(value: Any, path: str, geodata: GeoData) -> Tuple[Cidr, ...]:
    """CIDRs, IPs and ``geoip:``/``ext:`` lists, as the router reads them: dns.go calls
    its ``toCidrList``."""
    return tuple(cidr for i, text in enumerate(string_list(value, path))
                 for cidr in parse_ip_entry(text, f"{path}[{i}]", geodata))


def _client_ip(value: Any, path: str) -> Optional[Address]:
    if value is None:
        return None
    address = go_address(_string(value, path))
    if not address.is_ip:  # dns.go: "not an IP address:"
        raise ConfigError(f"not an IP address: {value!r}", path, expected="expected an IP address")
    return address


def _warn_unknown_keys(value: Mapping[str, Any], path: str) -> None:
    known = {k.casefold() for k in SERVER_KEYS}
    for key in value:
        if str(key).casefold() not in known:
            log.warning("%s: unknown key %r ignored", path, key)


# ---------------------------------------------------------------- hosts


def _hosts(value: Any, path: str, geodata: GeoData) -> Tuple[HostMapping, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{type(value).__name__} is not an object", path,
                          expected='expected {"domain": "IP or domain"}')
    errors: List[ConfigError] = []
    mappings: List[HostMapping] = []
    for key in sorted(value):  # dns.go sorts the keys: rule ids follow that order
        where = join_path(path, "[" + json.dumps(key) + "]")
        mappings.extend(_collect(errors, _host, (key, value[key]), where, geodata) or ())
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return tuple(mappings)


def _host(item: Tuple[str, Any], path: str, geodata: GeoData) -> List[HostMapping]:
    """A key's mappings: one, or one per domain of a geosite list (dns.go)."""
    key, target = item
    rules = _domain_rules(key, FULL, path, geodata, HOSTS_GEO_PREFIXES)
    address = go_address(_string(target, path))
    if not address.value:
        raise ConfigError(f"empty address for {key!r}", path, expected="expected an IP or a domain")
    addresses: Sequence[Address] = (address,)
    # hosts.go: a lone 127.0.0.1 also answers ::1 ("dirty workaround" for IPv6 localhost).
    if address.value == "127.0.0.1":
        addresses = (address, Address.parse("::1"))
    return [HostMapping(rule, tuple(addresses)) for rule in rules]


def _optional_string(value: Any, path: str) -> str:
    return "" if value is None else _string(value, path)


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{shown(value)} is not a string", path, expected="expected a string")
    return value
