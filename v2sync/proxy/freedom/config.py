"""Freedom outbound settings (v2ray ``infra/conf/freedom.go``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from v2sync.common import net
from v2sync.common.errors import ConfigError, join_path
from v2sync.infra.conf.fields import get_optional_uint, get_str, get_uint, require_object

AS_IS = "AsIs"
USE_IP = "UseIP"
USE_IPV4 = "UseIPv4"
USE_IPV6 = "UseIPv6"
# The spellings freedom.go accepts (compared lower-cased). 4.34 reads any other value as
# AsIs; v2sync refuses it instead, naming these, so a typo is not silently ignored.
DOMAIN_STRATEGIES = {
    "": AS_IS, "asis": AS_IS,
    "useip": USE_IP, "use_ip": USE_IP,
    "useip4": USE_IPV4, "useipv4": USE_IPV4, "use_ipv4": USE_IPV4, "use_ip_v4": USE_IPV4,
    "use_ip4": USE_IPV4,
    "useip6": USE_IPV6, "useipv6": USE_IPV6, "use_ipv6": USE_IPV6, "use_ip_v6": USE_IPV6,
    "use_ip6": USE_IPV6,
}
MAX_PORT = 65535
REDIRECT_EXPECTED = 'expected "host:port", "[ipv6]:port" or ":port"'


@dataclass(frozen=True)
class FreedomConfig:
    domain_strategy: str = AS_IS
    # (host, port); host "" keeps the original host, port 0 keeps the original port.
    redirect: Optional[Tuple[str, int]] = None
    user_level: int = 0
    timeout: Optional[int] = None  # deprecated; overrides connIdle at level 0

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "FreedomConfig":
        settings = require_object(settings, path)
        strategy = get_str(settings, "domainStrategy", path)
        if strategy.lower() not in DOMAIN_STRATEGIES:
            raise ConfigError(f"unknown domainStrategy {strategy!r}",
                              join_path(path, "domainStrategy"),
                              expected=f"expected one of: {AS_IS}, {USE_IP}, {USE_IPV4}, "
                                       f"{USE_IPV6}")
        redirect = get_str(settings, "redirect", path)
        return cls(
            domain_strategy=DOMAIN_STRATEGIES[strategy.lower()],
            redirect=redirect_host_port(redirect, join_path(path, "redirect")) if redirect else None,
            user_level=get_uint(settings, "userLevel", path),
            timeout=get_optional_uint(settings, "timeout", path),
        )


def redirect_host_port(text: str, path: str = "") -> Tuple[str, int]:
    """Go's ``net.SplitHostPort`` plus ``PortFromString``: IPv6 needs brackets."""
    parts = net.split_host_port(text)
    if parts is None:
        raise ConfigError(f"invalid redirect address {text!r}", path,
                          expected=REDIRECT_EXPECTED)
    port = net.decimal(parts[1])
    if port is None or port > MAX_PORT:
        raise ConfigError(f"invalid redirect port in {text!r}", path,
                          expected="expected a port 0-65535")
    return parts[0], port
