"""From merged JSON to ``model.Config`` (v2ray ``infra/conf/v2ray.go`` ``Config.Build``).

Public entry points: ``load_config`` (files and confdirs), ``load_default`` (the packaged
default.json), ``config_from_dict`` (one in-memory document) and ``build_config`` (an
already merged config). All of them raise one ``ConfigErrors`` carrying every problem found.
"""
from __future__ import annotations

import logging
from functools import partial
from importlib import resources
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from v2sync.common.errors import ConfigError, ConfigErrors, UnsupportedError, join_path
from v2sync.common.net import parse_host_port, go_address
from v2sync.infra.conf.fields import MAX_UINT32
from v2sync.infra.conf.loader import (Document, Located, MergedConfig, expand_confdirs, merge,
                                      parse_json, parse_port_range, read_json)
from v2sync.transport.internet.config import build_stream_settings
from v2sync.infra.conf.model import (DEFAULT_LOG_LEVEL, LOG_LEVELS, LOG_OFF, UNLIMITED_BUFFER,
                                     ApiConfig, Config, InboundConfig, LevelPolicy, LogConfig,
                                     MetricsConfig, MuxConfig, OutboundConfig, PolicyConfig,
                                     SniffingConfig, StreamConfig, SystemPolicy, deep_freeze)
from v2sync.infra.conf.validate import (NETWORK_ALIASES, ReportedErrors, TooManyErrors,
                                        check_document, sort_errors, without_errors)
from v2sync.app.dns.config import DnsConfig
from v2sync.app.router.config import from_json as routing_from_json
from v2sync.app.router.geodata import GeoData
from v2sync.common.mux.client import DEFAULT_CONCURRENCY as DEFAULT_MUX_CONCURRENCY
from v2sync.common.mux.client import MAX_CONCURRENCY as MAX_MUX_CONCURRENCY
from v2sync.common.protocol.server_spec import ServersConfig
from v2sync.proxy.blackhole.config import BlackholeConfig
from v2sync.proxy.dns.config import DnsOutboundConfig
from v2sync.proxy.dokodemo.config import DokodemoConfig
from v2sync.proxy.freedom.config import FreedomConfig
from v2sync.proxy.http.config import HttpServerConfig
from v2sync.proxy.shadowsocks.config import ShadowsocksClientConfig, ShadowsocksServerConfig
from v2sync.proxy.socks.config import SocksServerConfig
from v2sync.proxy.trojan.config import TrojanInboundConfig, TrojanOutboundConfig
from v2sync.proxy.vless.config import VlessInboundConfig, VlessOutboundConfig
from v2sync.proxy.vmess.config import VMessInboundConfig, VMessOutboundConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
SettingsConverter = Callable[[Mapping[str, Any], str], Any]

# Per-protocol ``settings`` converters, by handler kind and protocol name. Add a protocol
# here and to validate.SUPPORTED_INBOUNDS / SUPPORTED_OUTBOUNDS.
PROTOCOL_SETTINGS: Dict[str, Dict[str, SettingsConverter]] = {
    "inbound": {
        "dokodemo-door": DokodemoConfig.from_json,
        "http": HttpServerConfig.from_json,
        "shadowsocks": ShadowsocksServerConfig.from_json,
        "socks": SocksServerConfig.from_json,
        "vmess": VMessInboundConfig.from_json,
        "vless": VlessInboundConfig.from_json,
        "trojan": TrojanInboundConfig.from_json,
    },
    "outbound": {
        "dns": DnsOutboundConfig.from_json,
        "freedom": FreedomConfig.from_json,
        "vmess": VMessOutboundConfig.from_json,
        "blackhole": BlackholeConfig.from_json,
        "shadowsocks": ShadowsocksClientConfig.from_json,
        "vless": VlessOutboundConfig.from_json,
        "trojan": TrojanOutboundConfig.from_json,
        "http": partial(ServersConfig.from_json, protocol="http"),
        "socks": partial(ServersConfig.from_json, protocol="socks"),
    },
}

DEFAULT_RESOURCE = "default.json"
DEFAULT_NAME = "<built-in default.json>"
UNIX_SOCKET_PREFIXES = ("/", "@")  # v2ray.go: a listen address starting so is a socket
# v2ray.go accepts the name "localhost" as an IP listen address; Go binds its first address.
LOCALHOST_NAME, LOCALHOST_IP = "localhost", "127.0.0.1"
SNIFF_NAMES = {"http": "http", "tls": "tls", "https": "tls", "ssl": "tls"}  # v2ray.go
KIB = 1024


def load_config(files: Sequence[str], confdirs: Sequence[str] = ()) -> Config:
    """Read, validate, merge and build; ``-``/``stdin:`` read stdin. Warnings are logged."""
    names = [*files, *expand_confdirs(confdirs)]
    if not names:
        raise ConfigErrors([ConfigError("no config file given")])
    raws: List[Tuple[str, Mapping[str, Any]]] = []
    errors: List[ConfigError] = []
    for name in names:
        try:
            raws.append((name, read_json(name)))
        except ConfigError as e:
            errors.append(e)
    return _check_and_build(names, raws, errors)


def load_default() -> Config:
    """The default config shipped inside the package (independent of the working dir)."""
    text = resources.files(__package__).joinpath(DEFAULT_RESOURCE).read_text(encoding="utf-8")
    return config_from_dict(parse_json(text, DEFAULT_NAME), DEFAULT_NAME)


def config_from_dict(data: Mapping[str, Any], name: str = "<dict>") -> Config:
    """Validate and build one in-memory document, as if it were the only config file."""
    return _check_and_build([name], [(name, data)], [])


def _check_and_build(names: Sequence[str], raws: Sequence[Tuple[str, Mapping[str, Any]]],
                     errors: List[ConfigError]) -> Config:
    documents: List[Document] = []
    unsupported: List[ConfigError] = []
    for name, raw in raws:
        document, problems = check_document(raw, name)
        refused = [p for p in problems if not isinstance(p, UnsupportedError)]
        unsupported.extend(p for p in problems if isinstance(p, UnsupportedError))
        errors.extend(refused)
        documents.append(without_errors(document, refused))
    merged = merge(documents)
    # What v2sync does not implement counts only where the merge kept it: 4.34 builds the
    # merged config alone, so a handler a later file replaces may use anything.
    errors.extend(e for e in unsupported if merged.holds(e.file, e.path))
    if not errors:
        return build_config(merged)
    found: List[ConfigError] = list(errors)
    if not any(isinstance(e, TooManyErrors) for e in errors):
        # Build the parts that passed validation too, so the builder's findings (ports,
        # tags, per-protocol settings) come in the same report, not on the next attempt.
        builder = _Builder(merged, reported=ReportedErrors(errors))
        builder.build()
        found += builder.errors
    order = {name: i for i, name in enumerate(names)}
    raise ConfigErrors(sorted(sort_errors(found), key=lambda e: order.get(e.file, len(order))))


def build_config(merged: MergedConfig) -> Config:
    """Build the frozen Config; raises ConfigErrors with every semantic problem."""
    builder = _Builder(merged)
    config = builder.build()
    if builder.errors:
        raise ConfigErrors(sort_errors(builder.errors))
    return config


class _Builder:
    """One build. ``reported`` holds the validation errors already found: the steps whose
    input they refused are skipped, and whole-config checks (is there an outbound?), which
    would only restate those refusals, are left out."""

    def __init__(self, merged: MergedConfig, reported: Optional[ReportedErrors] = None):
        self.merged = merged
        self.partial = reported is not None
        self.reported = reported or ReportedErrors()
        self.errors: List[ConfigError] = []
        transport = merged.section("transport")
        self.transport: Mapping[str, Any] = transport.value if transport else {}

    def attempt(self, file: str, path: str, fn: Callable[..., T], *args: Any) -> Optional[T]:
        """Run the build step for the value at ``file``/``path``; its ConfigError(s) are
        recorded with ``file``, not raised. Skipped where validation found an error."""
        if self.reported.covers(file, path):
            return None
        try:
            return fn(*args)
        except ConfigErrors as e:
            self.errors.extend(err.located(file=file) for err in e.errors)
        except ConfigError as e:
            self.errors.append(e.located(file=file))
        return None

    def build(self) -> Config:
        merged = self.merged
        inbounds = [self.inbound(item, i == 0) for i, item in enumerate(merged.all_inbounds())]
        outbounds = [self.outbound(item) for item in merged.all_outbounds()]
        if not merged.all_outbounds() and not self.partial:
            # v2ray -test accepts this; at run time 4.34's dispatcher finds no default
            # handler and closes each connection (app/dispatcher/default.go routedDispatch).
            log.warning("no outbound configured: every connection will be closed")
        self.check_unique_tags("inbound", merged.all_inbounds())
        self.check_unique_tags("outbound", merged.all_outbounds())
        self.check_chain_cycles([o for o in outbounds if o is not None])
        log_section, policy_section = merged.section("log"), merged.section("policy")
        policy = PolicyConfig()
        if policy_section is not None:
            policy = self.attempt(policy_section.file, "policy", build_policy,
                                  policy_section.value) \
                or policy  # on error build_config raises anyway
        geodata = GeoData()  # each .dat file read once for the DNS and the routing
        dns_section = merged.section("dns")
        dns_settings = None
        if dns_section is not None:
            dns_settings = self.attempt(dns_section.file, "dns", DnsConfig.from_json,
                                        dns_section.value, "dns", geodata)
        routing_section = merged.section("routing")
        routing_settings = None
        if routing_section is not None:
            routing_settings = self.attempt(routing_section.file, "routing", routing_from_json,
                                            routing_section.value, "routing", geodata)
        return Config(
            dns_settings=dns_settings,
            routing_settings=routing_settings,
            log=build_log(log_section.value if log_section else None),
            policy=policy,
            inbounds=tuple(i for i in inbounds if i is not None),
            outbounds=tuple(o for o in outbounds if o is not None),
            routing=self.frozen_section("routing"),
            dns=self.frozen_section("dns"),
            files=merged.files,
            stats_enabled=merged.section("stats") is not None,
            api=self.optional("api", build_api),
            metrics=self.optional("metrics", build_metrics),
        )

    def optional(self, key: str, build: Callable[[Any], T]) -> Optional[T]:
        section = self.merged.section(key)
        if section is None:
            return None
        return self.attempt(section.file, key, build, section.value)

    def frozen_section(self, key: str) -> Mapping[str, Any]:
        section = self.merged.section(key)
        return deep_freeze(section.value) if section else MappingProxyType({})

    def inbound(self, item: Located, is_first: bool) -> Optional[InboundConfig]:
        raw, path, file = item.value, item.path, item.file
        before = len(self.errors)
        listen_path = join_path(path, "listen")
        listen = self.attempt(file, listen_path, parse_listen, raw.get("listen"), listen_path)
        port_value = raw.get("port")
        port_path, port_file = join_path(path, "port"), file
        legacy_port = self.merged.section("port")
        if port_value is None and is_first and legacy_port is not None:
            port_value, port_path, port_file = legacy_port.value, "port", legacy_port.file
        ports = None
        if not _is_unix_socket(raw.get("listen")):
            if port_value is None:
                self.errors.append(ConfigError("missing port", port_path, file,
                                               expected="an inbound listening on IP needs a port"))
            else:
                ports = self.attempt(port_file, port_path, parse_port_range, port_value,
                                     port_path)
        protocol = raw.get("protocol", "")
        settings = raw.get("settings") or {}
        proxy = self.convert("inbound", protocol, settings, path, file)
        stream_path = join_path(path, "streamSettings")
        stream = self.attempt(file, stream_path, build_stream, raw.get("streamSettings"),
                              self.transport, stream_path, True)
        if len(self.errors) > before or ports is None or stream is None \
                or self.reported.covers(file, path):
            return None
        return InboundConfig(protocol=protocol, tag=raw.get("tag", ""), listen=listen,
                             ports=ports, settings=deep_freeze(settings), stream=stream,
                             sniffing=build_sniffing(raw), path=path, file=file,
                             proxy_settings=proxy)

    def outbound(self, item: Located) -> Optional[OutboundConfig]:
        raw, path, file = item.value, item.path, item.file
        before = len(self.errors)
        via_path = join_path(path, "sendThrough")
        via = self.attempt(file, via_path, parse_send_through, raw.get("sendThrough"), via_path)
        protocol = raw.get("protocol", "")
        settings = raw.get("settings") or {}
        proxy = self.convert("outbound", protocol, settings, path, file)
        stream_path = join_path(path, "streamSettings")
        stream = self.attempt(file, stream_path, build_stream, raw.get("streamSettings"),
                              self.transport, stream_path, False)
        mux_path = join_path(path, "mux")
        mux = self.attempt(file, mux_path, build_mux, raw.get("mux"), mux_path)
        chain_path = join_path(path, "proxySettings")
        chain = self.attempt(file, chain_path, parse_proxy_tag, raw.get("proxySettings"),
                             chain_path)
        if len(self.errors) > before or stream is None or self.reported.covers(file, path):
            return None
        return OutboundConfig(protocol=protocol, tag=raw.get("tag", ""),
                              settings=deep_freeze(settings), stream=stream, send_through=via,
                              path=path, file=file, proxy_settings=proxy, mux=mux,
                              proxy_tag=chain)

    def convert(self, kind: str, protocol: str, settings: Mapping[str, Any], path: str,
                file: str) -> Any:
        converter = PROTOCOL_SETTINGS[kind].get(protocol) if isinstance(protocol, str) else None
        if converter is None:
            return None
        settings_path = join_path(path, "settings")
        return self.attempt(file, settings_path, converter, settings, settings_path)

    def check_chain_cycles(self, outbounds: Sequence[OutboundConfig]) -> None:
        """``proxySettings`` that lead back to where they started: each connection would
        dial itself through itself without end. 4.34 accepts them, and one connection grew
        it by 350 MB in 5 s; refused here, once per cycle (at its first outbound)."""
        # A blackhole dials nothing, so its proxySettings carry nothing: a chain ends there.
        carrier = {o.tag: o.proxy_tag for o in outbounds if o.tag and o.protocol != "blackhole"}
        order = {o.tag: i for i, o in enumerate(outbounds) if o.tag}
        for o in outbounds:
            if o.tag not in carrier or not o.proxy_tag:
                continue
            path, tag = [o.tag], o.proxy_tag
            while tag in carrier and tag not in path:  # at most one step per tag
                path.append(tag)
                tag = carrier[tag] or ""
            if tag == o.tag and all(order[t] >= order[o.tag] for t in path):
                self.errors.append(ConfigError(
                    f"proxySettings chain {' -> '.join(path + [tag])} comes back to "
                    f"{tag!r}: each connection would carry itself without end",
                    join_path(o.path, "proxySettings.tag"), o.file,
                    expected="a chain that ends at an outbound without proxySettings"))

    def check_unique_tags(self, kind: str, items: Sequence[Located]) -> None:
        first_seen: Dict[str, Located] = {}
        for item in items:
            tag = item.value.get("tag", "")
            if not tag or not isinstance(tag, str):  # a wrong type is a schema error
                continue
            if tag in first_seen:
                where = first_seen[tag]
                self.errors.append(ConfigError(
                    f"duplicate {kind} tag {tag!r}", join_path(item.path, "tag"), item.file,
                    expected=f"tags must be unique; first used at {where.file}: {where.path}"))
            else:
                first_seen[tag] = item


def _is_unix_socket(listen: Any) -> bool:
    return isinstance(listen, str) and listen.startswith(UNIX_SOCKET_PREFIXES)


def parse_listen(value: Optional[str], path: str) -> Optional[str]:
    """An inbound's ``listen``: None (all interfaces) or a canonical IP address."""
    if value is None:
        return None
    if _is_unix_socket(value):
        raise ConfigError(f"listening on unix socket {value!r} is not supported by v2sync",
                          path, expected="expected an IP address")
    if value == LOCALHOST_NAME:
        return LOCALHOST_IP
    address = go_address(value)
    if not address.is_ip:
        raise ConfigError(f"unable to listen on domain address {value!r}", path,
                          expected="expected an IP address")
    return address.value


def parse_send_through(value: Optional[str], path: str) -> Optional[str]:
    if value is None:
        return None
    address = go_address(value)
    if not address.is_ip:  # v2ray.go: "unable to send through: <domain>"
        raise ConfigError(f"unable to send through {value!r}", path,
                          expected="expected an IP address")
    return address.value


def parse_proxy_tag(value: Optional[Mapping[str, Any]], path: str) -> Optional[str]:
    """``proxySettings``: the tag of the outbound that carries this one (the schema checked
    the shape); a section without one is refused as v2ray.go's ProxyConfig.Build does."""
    if value is None:
        return None
    tag = value.get("tag", "")
    if not tag:
        raise ConfigError("invalid outbound detour proxy settings: Proxy tag is not set.",
                          join_path(path, "tag"), expected="the tag of another outbound")
    return tag


def build_stream(raw: Optional[Mapping[str, Any]], transport: Mapping[str, Any],
                 path: str = "streamSettings", server: bool = False) -> StreamConfig:
    """``streamSettings`` with the global ``transport`` filling unset *Settings
    (v2ray.go ``applyTransportConfig``), and the transport layer's settings built from it
    (``server``: an inbound's, which must be able to serve TLS)."""
    settings = dict(raw or {})
    for key, value in transport.items():
        settings.setdefault(key, value)
    network = NETWORK_ALIASES.get(settings.get("network", "tcp"), settings.get("network", "tcp"))
    security = "tls" if settings.get("security") == "tls" else "none"  # EqualFold "tls"
    try:
        built = build_stream_settings(network, security, settings, server)
    except ConfigError as e:
        raise e.located(prefix=path) from None
    return StreamConfig(network, security, deep_freeze(settings), built)


def build_mux(raw: Optional[Mapping[str, Any]], path: str) -> Optional[MuxConfig]:
    """v2ray.go MuxConfig.Build and handler.go's check: a negative concurrency means no mux,
    0 or absent means 8, and past 1024 4.34 refuses to start ("invalid mux concurrency")."""
    if raw is None:
        return None
    concurrency = raw.get("concurrency", 0)
    if concurrency < 0:
        return None
    if concurrency > MAX_MUX_CONCURRENCY:
        raise ConfigError(f"invalid mux concurrency: {concurrency}",
                          join_path(path, "concurrency"),
                          expected=f"1..{MAX_MUX_CONCURRENCY}, 0 for the default "
                                   f"{DEFAULT_MUX_CONCURRENCY}, negative for no mux")
    return MuxConfig(bool(raw.get("enabled", False)), concurrency or DEFAULT_MUX_CONCURRENCY)


def build_sniffing(raw: Mapping[str, Any]) -> SniffingConfig:
    """``sniffing`` wins when present; else the legacy ``domainOverride`` enables it
    (app/proxyman/config.go ``GetEffectiveSniffingSettings``)."""
    sniffing = raw.get("sniffing")
    if sniffing is not None:
        return SniffingConfig(sniffing.get("enabled", False),
                              _sniff_names(sniffing.get("destOverride", ())))
    override = raw.get("domainOverride")
    if override:
        return SniffingConfig(True, _sniff_names(override))
    return SniffingConfig()


def _sniff_names(names: Sequence[str]) -> tuple:
    canonical = [SNIFF_NAMES[n] for n in names]
    return tuple(dict.fromkeys(canonical))  # de-duplicated, order kept


def build_log(raw: Optional[Mapping[str, Any]]) -> LogConfig:
    """4.34 ``LogConfig.Build``: with a section, "" means stdout and "none" means off."""
    if raw is None:
        return LogConfig()
    level = raw.get("loglevel", "").lower()
    if level not in LOG_LEVELS:
        level = DEFAULT_LOG_LEVEL  # validation already warned about an unknown level
    if level == LOG_OFF:
        return LogConfig(access=None, error=None, level=LOG_OFF)
    return LogConfig(access=_log_target(raw.get("access", "")),
                     error=_log_target(raw.get("error", "")), level=level)


def _log_target(value: str) -> Optional[str]:
    return None if value == LOG_OFF else value


def build_policy(raw: Mapping[str, Any]) -> PolicyConfig:
    levels: Dict[int, LevelPolicy] = {}
    errors: List[ConfigError] = []
    for key, value in (raw.get("levels") or {}).items():
        level = int(key)
        if level > MAX_UINT32:
            errors.append(ConfigError(f"user level {key} is out of range", f"policy.levels.{key}",
                                      expected=f"expected 0-{MAX_UINT32}"))
        else:
            levels[level] = build_level_policy(value)
    if errors:
        raise ConfigErrors(errors)
    system = raw.get("system") or {}
    return PolicyConfig(
        levels=MappingProxyType(levels),
        system=SystemPolicy(system.get("statsInboundUplink", False),
                            system.get("statsInboundDownlink", False),
                            system.get("statsOutboundUplink", False),
                            system.get("statsOutboundDownlink", False)),
        configured=True)


def build_level_policy(raw: Mapping[str, Any]) -> LevelPolicy:
    """A configured level: fields it leaves out keep SessionDefault() (app/policy/config.go)."""
    default = LevelPolicy()
    buffer = raw.get("bufferSize")
    if buffer is None:
        buffer_size = default.buffer_size
    else:  # policy.go: KiB; negative means unlimited
        buffer_size = buffer * KIB if buffer >= 0 else UNLIMITED_BUFFER
    return LevelPolicy(
        handshake=float(raw.get("handshake", default.handshake)),
        conn_idle=float(raw.get("connIdle", default.conn_idle)),
        uplink_only=float(raw.get("uplinkOnly", default.uplink_only)),
        downlink_only=float(raw.get("downlinkOnly", default.downlink_only)),
        buffer_size=buffer_size,
        stats_user_uplink=raw.get("statsUserUplink", False),
        stats_user_downlink=raw.get("statsUserDownlink", False),
    )


# infra/conf/api.go: service names, matched case-insensitively.
API_SERVICES = {name.lower(): name for name in ("HandlerService", "LoggerService",
                                                 "StatsService")}


def build_api(raw: Mapping[str, Any]) -> ApiConfig:
    tag = raw.get("tag", "")
    if not tag:
        raise ConfigError("API tag can't be empty.", "api.tag", expected="a tag, e.g. \"api\"")
    services = []
    for i, name in enumerate(raw.get("services") or ()):
        canonical = API_SERVICES.get(name.lower())
        if canonical is None:  # 4.34 skips unknown names; ReflectionService is not served
            log.warning("api.services[%d]: %r is not served by v2sync (served: %s)", i, name,
                        ", ".join(sorted(API_SERVICES.values())))
        elif canonical not in services:
            services.append(canonical)
    return ApiConfig(tag, tuple(services))


def build_metrics(raw: Mapping[str, Any]) -> MetricsConfig:
    return MetricsConfig(*parse_host_port(raw["listen"], "metrics.listen"))
