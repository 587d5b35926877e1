"""The frozen config objects the runtime is built from.

Defaults are V2Ray 4.34's (``features/policy/policy.go``, ``infra/conf/log.go``), so a
``Config`` built from an empty document behaves like v2ray with an empty config. Mappings are
read-only (``types.MappingProxyType``, lists become tuples) so one Config can be shared by
every thread.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

# SessionDefault() in features/policy/policy.go (4.34; the 4/300/2/5 in old docs is stale).
DEFAULT_HANDSHAKE = 60.0
DEFAULT_CONN_IDLE = 300.0
DEFAULT_UPLINK_ONLY = 1.0
DEFAULT_DOWNLINK_ONLY = 1.0
DEFAULT_BUFFER_SIZE = 512 * 1024  # defaultBufferPolicy() on amd64, in bytes
UNLIMITED_BUFFER = -1  # policy.go: a negative JSON bufferSize means "no limit"
# features/policy/default.go DefaultManager: with no policy section, level 1 idles 600 s.
UNCONFIGURED_LEVEL1_CONN_IDLE = 600.0

LOG_LEVELS = ("debug", "info", "warning", "error", "none")
DEFAULT_LOG_LEVEL = "warning"
LOG_OFF = "none"  # log.go: "none" as a path turns that log off


def deep_freeze(value: Any) -> Any:
    """A read-only copy: dicts become MappingProxyType, lists become tuples.

    Without recursion: a config may nest 10,000 levels (Go's limit), ten times Python's
    recursion limit. Containers are visited parents first and frozen children first.
    """
    if not isinstance(value, (Mapping, list, tuple)):
        return value
    order: List[Any] = []  # every container, each after its parent (a shared one once per parent)
    pending = [value]
    while pending:
        container = pending.pop()
        order.append(container)
        children = container.values() if isinstance(container, Mapping) else container
        pending.extend(c for c in children if isinstance(c, (Mapping, list, tuple)))
    frozen: Dict[int, Any] = {}  # id(container) -> its frozen copy; ``order`` keeps ids alive
    for container in reversed(order):
        frozen[id(container)] = _freeze_one(container, frozen)
    return frozen[id(value)]


def _freeze_one(container: Any, frozen: Mapping[int, Any]) -> Any:
    def item(v: Any) -> Any:
        return frozen[id(v)] if isinstance(v, (Mapping, list, tuple)) else v

    if isinstance(container, Mapping):
        return MappingProxyType({k: item(v) for k, v in container.items()})
    return tuple(item(v) for v in container)


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


def _empty_levels() -> "Mapping[int, LevelPolicy]":
    return MappingProxyType({})


@dataclass(frozen=True)
class PortRange:
    """Ports ``first..last`` inclusive; iterating yields each port."""

    first: int
    last: int

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True)
class SniffingConfig:
    enabled: bool = False
    dest_override: Tuple[str, ...] = ()  # canonical names: "http", "tls"


@dataclass(frozen=True)
class StreamConfig:
    """``streamSettings``: canonical network/security plus every raw sub-setting, frozen."""

    network: str = "tcp"
    security: str = "none"
    settings: Mapping[str, Any] = field(default_factory=_empty, hash=False)
    # transport.internet.config.StreamSettings built from the above (None: plain TCP).
    transport: Any = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class InboundConfig:
    protocol: str
    tag: str
    listen: Optional[str]
    ports: PortRange
    settings: Mapping[str, Any] = field(default_factory=_empty, hash=False)
    stream: StreamConfig = field(default_factory=StreamConfig)
    sniffing: SniffingConfig = field(default_factory=SniffingConfig)
    path: str = ""  # JSON path inside ``file``, e.g. "inbounds[0]"
    file: str = ""
    # The protocol's converted settings (its config.py dataclass) when builder knows one.
    proxy_settings: Any = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class MuxConfig:
    """An outbound's ``mux`` (infra/conf/v2ray.go MuxConfig.Build): concurrency 1..1024."""

    enabled: bool = False
    concurrency: int = 8


@dataclass(frozen=True)
class OutboundConfig:
    protocol: str
    tag: str
    settings: Mapping[str, Any] = field(default_factory=_empty, hash=False)
    stream: StreamConfig = field(default_factory=StreamConfig)
    send_through: Optional[str] = None
    path: str = ""
    file: str = ""
    proxy_settings: Any = field(default=None, compare=False, hash=False)
    mux: Optional[MuxConfig] = None  # None: no mux section, or a negative concurrency
    # ``proxySettings.tag``: the outbound whose links carry this one's connections.
    proxy_tag: Optional[str] = None


@dataclass(frozen=True)
class LevelPolicy:
    """One user level's policy; timeouts in seconds, buffer in bytes (-1 = unlimited)."""

    handshake: float = DEFAULT_HANDSHAKE
    conn_idle: float = DEFAULT_CONN_IDLE
    uplink_only: float = DEFAULT_UPLINK_ONLY
    downlink_only: float = DEFAULT_DOWNLINK_ONLY
    buffer_size: int = DEFAULT_BUFFER_SIZE
    stats_user_uplink: bool = False
    stats_user_downlink: bool = False


# The policies of unconfigured levels, made once: relays look their level up several
# times per connection, and a frozen dataclass's __init__ costs a few microseconds.
_SESSION_DEFAULT = LevelPolicy()
_UNCONFIGURED_LEVEL1 = LevelPolicy(conn_idle=UNCONFIGURED_LEVEL1_CONN_IDLE)


@dataclass(frozen=True)
class SystemPolicy:
    stats_inbound_uplink: bool = False
    stats_inbound_downlink: bool = False
    stats_outbound_uplink: bool = False
    stats_outbound_downlink: bool = False


@dataclass(frozen=True)
class PolicyConfig:
    """``policy``; ``configured`` is False when the config had no policy section at all."""

    levels: Mapping[int, LevelPolicy] = field(default_factory=_empty_levels, hash=False)
    system: SystemPolicy = field(default_factory=SystemPolicy)
    configured: bool = False

    def for_level(self, level: int) -> LevelPolicy:
        """The level's policy; unconfigured levels get SessionDefault()."""
        policy = self.levels.get(level)
        if policy is not None:
            return policy
        if level == 1 and not self.configured:
            return _UNCONFIGURED_LEVEL1
        return _SESSION_DEFAULT


@dataclass(frozen=True)
class LogConfig:
    """Where logs go: ``None`` = off, ``""`` = stdout, anything else = a file path.

    The defaults are 4.34's DefaultLogConfig(): no access log, errors to stdout, warning.
    """

    access: Optional[str] = None
    error: Optional[str] = ""
    level: str = DEFAULT_LOG_LEVEL


@dataclass(frozen=True)
class ApiConfig:
    """``api``: the tag of the commander's virtual outbound and the services it serves
    (canonical names: "HandlerService", "LoggerService", "StatsService")."""

    tag: str
    services: Tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics`` (v2sync's own; 4.34 ignores the key): where ``/metrics`` is served."""

    listen: str
    port: int


@dataclass(frozen=True)
class Config:
    log: LogConfig = field(default_factory=LogConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    inbounds: Tuple[InboundConfig, ...] = ()
    outbounds: Tuple[OutboundConfig, ...] = ()
    routing: Mapping[str, Any] = field(default_factory=_empty, hash=False)
    dns: Mapping[str, Any] = field(default_factory=_empty, hash=False)
    files: Tuple[str, ...] = ()
    stats_enabled: bool = False  # a "stats" section was present
    api: Optional[ApiConfig] = None
    metrics: Optional[MetricsConfig] = None
    # Converted sections (app.dns.config.DnsConfig, app.router.config.RoutingConfig), or None.
    dns_settings: Any = field(default=None, compare=False, hash=False)
    routing_settings: Any = field(default=None, compare=False, hash=False)
