"""The Instance (v2ray ``v2ray.go``): builds features from a Config, starts and closes them.

Features start in dependency order: timers, policy, outbounds, dispatcher, then inbounds
last, so no connection is accepted before everything it needs exists. Close runs the other
way: stop accepting, give live connections a grace period, abort the rest, join every thread.
"""
from __future__ import annotations

import logging
import time
from typing import List

from v2sync import __version__, distro  # noqa: F401  (distro registers every protocol)
from v2sync.app.dispatcher.default import DefaultDispatcher
from v2sync.app.dns.server import DnsResolver
from v2sync.app.router.router import Router
from v2sync.app.log.access import AccessLog
from v2sync.app.policy.manager import PolicyManager
from v2sync.app.proxyman.inbound import InboundHandler, InboundManager
from v2sync.app.proxyman.outbound import OutboundHandler, OutboundManager
from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.common.registry import INBOUNDS, OUTBOUNDS
from v2sync.common.signal import TimerWheel
from v2sync.common.task import ThreadGroup, set_thread_stack_size
from v2sync.features.proxy import ProxyContext
from v2sync.infra.conf.model import Config

log = logging.getLogger("v2sync.core")

SHUTDOWN_GRACE = 2.0
JOIN_AFTER_ABORT = 3.0
GRACE_POLL = 0.05


class Instance:
    def __init__(self, config: Config):
        set_thread_stack_size()
        self.config = config
        self.timers = TimerWheel()
        self.policy = PolicyManager(config.policy)
        self.workers = ThreadGroup("connections")
        self.listener_threads = ThreadGroup("listeners")
        self.dns = DnsResolver(config.dns_settings)
        self.context = ProxyContext(self.policy, self.timers, self.workers, self.dns)
        self.outbounds = OutboundManager()
        self.inbounds = InboundManager()
        self.dispatcher = DefaultDispatcher(self.outbounds, self.policy, self.workers, AccessLog())
        self._build()
        if config.routing_settings is not None:
            # The router resolves names with the built-in DNS (IPIfNonMatch / IPOnDemand).
            self.dispatcher.router = Router(
                config.routing_settings, resolve=lambda name: self.dns.lookup(name, "UseIP"),
                outbound_tags=[oc.tag for oc in config.outbounds if oc.tag])
        self.running = False

    def _build(self) -> None:
        errors: List[ConfigError] = []
        for oc in self.config.outbounds:
            try:
                self.outbounds.add(OutboundHandler(oc.tag, self._make_proxy(OUTBOUNDS, oc)))
            except ConfigError as e:
                errors.append(e)
        for ic in self.config.inbounds:
            try:
                proxy = self._make_proxy(INBOUNDS, ic)
                self.inbounds.add(InboundHandler(ic, proxy, self.dispatcher, self.workers,
                                                 self.policy.for_level(0).handshake))
            except ConfigError as e:
                errors.append(e)
        if errors:
            raise ConfigErrors(errors)

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
            self.inbounds.start(self.listener_threads)
        except Exception:
            self.close()
            raise
        self.running = True
        log.warning("v2sync %s started", __version__)

    def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        self.inbounds.stop_listening()
        self.listener_threads.join(JOIN_AFTER_ABORT)
        self._wait_for_connections(grace)
        aborted = self.inbounds.abort_connections() + self.dispatcher.interrupt_all()
        if aborted:
            log.info("aborted %d live connection(s) at shutdown", aborted)
        if not self.workers.join(JOIN_AFTER_ABORT):
            log.error("threads still running after shutdown: %s",
                      ", ".join(t.name for t in self.workers.live()))
        for group in (self.workers, self.listener_threads):
            if not group.shutdown(JOIN_AFTER_ABORT):
                log.error("%s: threads did not exit", group.name)
        self.outbounds.close()
        self.timers.stop()
        self.running = False

    def _wait_for_connections(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.workers.live():
            time.sleep(GRACE_POLL)

    def __enter__(self) -> "Instance":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
