"""The Instance (v2ray ``v2ray.go``): builds features from a Config, starts and closes them.

Features start in dependency order: timers, policy, outbounds, dispatcher, then inbounds
last, so no connection is accepted before everything it needs exists. Close runs the other
way: stop accepting, give live connections a grace period, abort the rest, join every thread.

A reload (SIGHUP, ``systemctl reload``) builds a new Instance from the re-read config while
this one serves on: this one stops listening, the new one binds the same ports and starts,
and this one ``retire``s, its live connections going on under the config they started with
until they end, the old ``connIdle`` has passed, or the process stops.

Close has one deadline, ``grace + ABORT_BUDGET`` from its start, that every step shares:
the grace ends at its own time whatever stopping the listeners took, and the joins after
the abort get what is left, so no sum of per-step timeouts can stretch it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import threading
import time
from typing import Any, Iterator, List, Optional

from v2sync import __version__, distro  # noqa: F401  (distro registers every protocol)
from v2sync.app.dispatcher.default import DefaultDispatcher
from v2sync.app.dns.routed import routed_dial
from v2sync.app.dns.server import DnsResolver
from v2sync.app.router.router import Router
from v2sync.app.log.access import AccessLog
from v2sync.app.policy.manager import PolicyManager
from v2sync.app.proxyman.inbound import InboundHandler, InboundManager
from v2sync.app.proxyman.outbound import OutboundHandler, OutboundManager
from v2sync.app.stats.manager import StatsManager
from v2sync.common.errors import ConfigError, ConfigErrors, V2SyncError
from v2sync.common.mux.server import MuxServer
from v2sync.app.proxyman.chain import ChainDialer
from v2sync.common.registry import INBOUNDS, OUTBOUNDS
from v2sync.common.signal import TimerWheel
from v2sync.common.task import RUN_SLOTS, ThreadGroup, tune_for_many_threads
from v2sync.features.proxy import ProxyContext
from v2sync.infra.conf.model import Config
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.internet.readiness import ReadWaiter

log = logging.getLogger("v2sync.core")

# Live connections get this long to end on their own (the README's promise).
SHUTDOWN_GRACE = 2.0
# After the abort, every thread has this long to end: close() returns by grace + this (late
# only by what the main thread waits for the GIL). Measured (tools/massclose_probe.py
# sigterm, 2 CPUs shared with other jobs): 200 busy connections exit in 2.2 s, all joined;
# 2,000 in 3.1-4.2 s, some of their 8,000 threads still ending at the deadline (they are
# daemon threads: the process's exit ends them).
ABORT_BUDGET = 0.8
GRACE_POLL = 0.05
# The grace ends early once no connection has moved a byte for this long. What is idle then
# (a browser's kept-alive connection, a UDP session, a relay lingering for downlinkOnly)
# would only wait the grace out: SIGTERM took the whole 2 s whenever one was open.
QUIET_GRACE = 0.5
# After the grace, nothing is served any more: the main thread keeps the GIL until it
# blocks, instead of yielding it every 50 ms to thousands of threads (each yield cost it a
# turn behind all of them: with 2,000 busy connections, the link interrupts took 0.2-6 s
# and the joins' bookkeeping 1.6-2.6 s; with this, 45-75 ms and milliseconds).
ABORT_SWITCH_INTERVAL = 1.0
MAX_NAMES_LOGGED = 20
# How often a retired Instance (after a reload) looks whether its connections have ended.
RETIRE_POLL = 0.5


class Instance:
    def __init__(self, config: Config, stats: Optional[StatsManager] = None):
        """``stats``: the counters of the Instance this one replaces (a reload), kept when
        the config still has a ``stats`` section, so the API's figures go on and what the
        retired Instance's connections move is counted where the API sees it."""
        tune_for_many_threads()
        self.config = config
        self.timers = TimerWheel()
        self.policy = PolicyManager(config.policy)
        self.workers = ThreadGroup("connections", run_slots=RUN_SLOTS)
        self.listener_threads = ThreadGroup("listeners")
        self.dns = DnsResolver(config.dns_settings)
        self.readiness = ReadWaiter()
        self.context = ProxyContext(self.policy, self.timers, self.workers, self.dns,
                                    self.readiness)
        self.outbounds = OutboundManager()
        self.inbounds = InboundManager()
        self.dispatcher = DefaultDispatcher(self.outbounds, self.policy, self.workers, AccessLog())
        # As 4.34: the DNS's own queries are routed (dns.tag), not sent from this host.
        self.dns.route_through(routed_dial(self.dispatcher, self.dns.config.tag))
        # app/stats: only with a "stats" section, as 4.34 (no counter costs anything without).
        self.stats: Optional[StatsManager] = (
            (stats or StatsManager()) if config.stats_enabled else None)
        self.dispatcher.stats = self.stats
        self.dispatcher.timers = self.timers
        self.commander: Optional[Any] = None  # app.commander.outbound.Commander
        self.metrics: Optional[Any] = None  # app.metrics.MetricsServer
        self._build()
        self._build_api()
        if config.routing_settings is not None:
            # The router resolves names with the built-in DNS (IPIfNonMatch / IPOnDemand).
            self.dispatcher.router = Router(
                config.routing_settings, resolve=lambda name: self.dns.lookup(name, "UseIP"),
                outbound_tags=lambda: self.outbounds.tags)
        self.running = False
        self._listening = True

    def _build(self) -> None:
        errors: List[ConfigError] = []
        for oc in self.config.outbounds:
            try:
                proxy = self._make_proxy(OUTBOUNDS, oc)
                self._count_outbound(oc.tag, proxy)
                self._chain_outbound(oc, proxy)
                self.outbounds.add(OutboundHandler(oc.tag, proxy, oc.mux, self.context))
            except ConfigError as e:
                errors.append(e)
        # Every inbound dispatches through the Mux.cool server (4.34 always.go wraps each).
        inbound_dispatcher = MuxServer(self.dispatcher, self.policy, self.workers)
        for ic in self.config.inbounds:
            try:
                proxy = self._make_proxy(INBOUNDS, ic)
                handler = InboundHandler(ic, proxy, inbound_dispatcher, self.workers,
                                         self.policy.for_level(0).handshake)
                self._count_inbound(handler)
                self.inbounds.add(handler)
            except ConfigError as e:
                errors.append(e)
        if errors:
            raise ConfigErrors(errors)

    def _count_inbound(self, handler: InboundHandler) -> None:
        """proxyman/inbound: counters for a tagged inbound whose system policy asks."""
        system = self.config.policy.system
        if self.stats is not None and handler.tag:
            handler.counters = self.stats.traffic_pair(
                "inbound", handler.tag, system.stats_inbound_uplink, system.stats_inbound_downlink)

    def _count_outbound(self, tag: str, proxy) -> None:
        """proxyman/outbound: each connection the outbound dials counts (its StreamClient).
        Every tagged outbound has its counters, as in 4.34's NewHandler: one that dials
        nothing (blackhole) shows them at 0."""
        system = self.config.policy.system
        if self.stats is None or not tag:
            return
        counters = self.stats.traffic_pair(
            "outbound", tag, system.stats_outbound_uplink, system.stats_outbound_downlink)
        client = getattr(proxy, "client", None)
        if isinstance(client, StreamClient):
            client.counters = counters

    def _chain_outbound(self, oc, proxy) -> None:
        """``proxySettings``: the outbound's dials go through the tagged one (looked up at
        each dial). A proxy that dials nothing (blackhole) has nothing to carry."""
        client = getattr(proxy, "client", None)
        if oc.proxy_tag and isinstance(client, StreamClient):
            client.carry_through(ChainDialer(oc.proxy_tag, oc.tag, self.outbounds,
                                             self.context))

    def _build_api(self) -> None:
        """The commander's virtual outbound, under ``api.tag`` (imported only when used:
        h2 and protobuf are not loaded for a config without ``api``)."""
        if self.config.metrics is not None:
            _require("prometheus_client", "metrics", "metrics")
        if self.config.api is None:
            return
        _require("h2", "api", "api")
        _require("google.protobuf", "api", "api")
        from v2sync.app.commander.outbound import Commander
        self.commander = Commander(self.config.api, self)
        try:
            self.outbounds.add(OutboundHandler(self.commander.tag, self.commander.outbound))
        except V2SyncError as e:
            raise ConfigErrors([ConfigError(str(e), "api.tag")]) from None

    def remove_inbound(self, tag: str) -> bool:
        """The API's RemoveInbound, as 4.34's handler ``Close``: the listeners and the
        proxy close, live connections go on (the API call's own too, when the API's inbound
        is the one removed: cutting them made a removal that worked fail as UNAVAILABLE;
        found by a review)."""
        handler = self.inbounds.remove(tag) if tag else None
        if handler is None:
            return False
        handler.close_proxy()
        return True

    def remove_outbound(self, tag: str) -> bool:
        """The API's RemoveOutbound; connections it carries end with their relays. False
        for an empty tag; an unknown one is removed already (4.34: no error)."""
        if not tag:
            return False
        self.outbounds.remove(tag)
        return True

    def _make_proxy(self, registry, hc):
        cls = registry.get(hc.protocol, f"{hc.path}.protocol")
        try:
            settings = hc.proxy_settings  # converted once by the config builder
            if settings is None:
                settings = cls.config_type.from_json(hc.settings, f"{hc.path}.settings")
            return cls(settings, self.context, hc)
        except ConfigError as e:
            raise e.located(file=hc.file) from None

    def start(self) -> None:
        self.timers.start()
        try:
            if self.config.metrics is not None:
                from v2sync.app.metrics import MetricsServer
                self.metrics = MetricsServer(self, self.config.metrics)
                self.metrics.start()
            self.inbounds.start(self.listener_threads)
        except Exception:
            self.close()
            raise
        self.running = True
        log.warning("v2sync %s started", __version__)

    def stop_listening(self) -> None:
        """Close every listener and unfinished handshake; live connections go on."""
        if self._listening:
            self._listening = False
            self.inbounds.stop_listening()
            if self.metrics is not None:
                self.metrics.stop_listening()

    def retire(self, stop: threading.Event) -> None:
        """After a reload: close once no connection is left, the level-0 ``connIdle`` has
        passed (an idle one would have been closed by then anyway), or ``stop`` is set,
        in which case the live connections get the usual grace."""
        self.stop_listening()
        deadline = time.monotonic() + self.policy.for_level(0).conn_idle
        while self.workers.live() and time.monotonic() < deadline:
            if stop.wait(RETIRE_POLL):
                break
        self.close()

    def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        started = time.monotonic()
        self.stop_listening()
        self._wait_for_connections(started + grace)
        deadline = time.monotonic() + ABORT_BUDGET  # after the grace, however it ended
        with _switch_interval(ABORT_SWITCH_INTERVAL):
            self._abort_all(deadline)
            self._join_all(deadline)
        self.outbounds.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.commander is not None:
            self.commander.close()
        self.timers.stop(max(_left(deadline), GRACE_POLL))  # it stops at once when told
        self.readiness.stop(max(_left(deadline), GRACE_POLL))
        self.running = False
        log.info("closed in %.2f s", time.monotonic() - started)

    def _wait_for_connections(self, until: float) -> None:
        while time.monotonic() < until and self.workers.live() and not self._quiet():
            time.sleep(GRACE_POLL)

    def _quiet(self) -> bool:
        return time.monotonic() - self.timers.last_activity() >= QUIET_GRACE

    def _abort_all(self, deadline: float) -> None:
        """End every connection now, with as few system calls in this thread as it can.

        Every relay is aborted through its timer (``TimerWheel.expire_all``): a busy one
        aborts itself at its next chunk, an idle one is fired by the wheel. Interrupting
        the links is pure Python. Inbound connections still listed after half the time
        left are not relaying (a dial, a dispatch): their sockets are shut down last.
        Measured with 2,000 busy connections: when this thread shut every socket down
        first, each shutdown() handed the GIL to ~8,000 busy threads, and that loop took
        0.4-28 s.
        """
        self.timers.expire_all()
        aborted = self.dispatcher.interrupt_all()
        self.workers.join(_left(deadline) / 2)
        aborted += self.inbounds.abort_connections()
        if aborted:
            log.info("aborted %d live connection(s) at shutdown", aborted)

    def _join_all(self, deadline: float) -> None:
        """Join every task, then every thread, by ``deadline``; say what is left."""
        if not self.workers.join(_left(deadline)):
            live = self.workers.live()
            log.error("%d thread(s) still running at shutdown: %s", len(live),
                      ", ".join(t.name for t in live[:MAX_NAMES_LOGGED]))
        for group in (self.workers, self.listener_threads):
            if not group.shutdown(_left(deadline)):
                log.error("%s: threads did not exit", group.name)

    def __enter__(self) -> "Instance":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Optional features' packages: import name -> the name pip knows.
OPTIONAL_PACKAGES = {"h2": "h2", "google.protobuf": "protobuf",
                     "prometheus_client": "prometheus-client"}


def _require(module: str, extra: str, path: str) -> None:
    """An optional feature's package, or a ConfigError saying how to install it."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (google) is missing
        found = False
    if not found:
        raise ConfigErrors([ConfigError(
            f"needs the Python package {OPTIONAL_PACKAGES[module]}", path,
            expected=f"pip install 'v2sync[{extra}]'")])


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


@contextlib.contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)
