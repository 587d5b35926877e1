"""What a protocol implementation provides (v2ray ``proxy/proxy.go``).

An inbound proxy speaks its protocol on an accepted ``Connection`` and calls the dispatcher;
an outbound proxy carries a ``Link`` to the target through a dialer. Each is registered under
its JSON name (``common.registry``) with a ``config_type`` whose ``from_json`` builds its
frozen settings.
"""
from __future__ import annotations

from typing import Protocol

from v2sync.common.session import Session
from v2sync.features.routing import Dispatcher
from v2sync.transport.internet.conn import Connection
from v2sync.transport.link import Link


class InboundProxy(Protocol):
    def process(self, session: Session, conn: Connection, dispatcher: Dispatcher) -> None: ...


class OutboundProxy(Protocol):
    def process(self, session: Session, link: Link) -> None: ...


class ProxyContext:
    """What every handler needs from the Instance: policy, timers and its thread group."""

    def __init__(self, policy, timers, threads, dns=None):
        self.policy = policy      # app.policy.manager.PolicyManager
        self.dns = dns            # app.dns.server.DnsResolver (the built-in DNS)
        self.timers = timers      # common.signal.TimerWheel
        self.threads = threads    # common.task.ThreadGroup (joined on shutdown)
