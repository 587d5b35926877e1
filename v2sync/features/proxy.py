"""What a protocol implementation provides (v2ray ``proxy/proxy.go``).

An inbound proxy speaks its protocol on an accepted ``Connection`` and calls the dispatcher;
an outbound proxy carries a ``Link`` to the target through a dialer. Each is registered under
its JSON name (``common.registry``) with a ``config_type`` whose ``from_json`` builds its
frozen settings.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

from v2sync.common.session import Session
from v2sync.features.routing import Dispatcher
from v2sync.transport.internet.conn import Connection
from v2sync.transport.link import Link


class InboundProxy(Protocol):
    def process(self, session: Session, conn: Connection, dispatcher: Dispatcher) -> None: ...


class OutboundProxy(Protocol):
    """``process``, or instead ``process_steps``: the same as steps (``common.task``),
    whose relay reader parks while idle. The outbound handler runs whichever it has.

    A class attribute ``starts_in_caller = True`` says its steps go from the dial and the
    server's handshake to ``run_relay_steps`` without reading the client's pipe first, so
    an inbound's thread may run that start (``OutboundHandler.starts_here``)."""

    def process(self, session: Session, link: Link) -> None: ...


@runtime_checkable
class UserManager(Protocol):
    """An inbound whose users change at run time (v2ray ``proxy.UserManager``).

    The API's AlterInbound (AddUserOperation/RemoveUserOperation) calls these. A user is
    given as one entry of the inbound's config list (``clients[i]`` of VMess, VLESS or
    Trojan), so each protocol checks it with its own config code; a user added connects
    at once, a user removed is refused from its next connection on.
    """

    # Whose accounts it takes: "vmess", "vless" or "trojan" (app.commander.users.ACCOUNTS).
    account_protocol: str

    def add_user(self, client: Mapping[str, Any]) -> None:
        """Raises ConfigError when the entry is invalid or its email is already taken."""

    def remove_user(self, email: str) -> None:
        """Raises UserNotFound when no user has that email."""


class ProxyContext:
    """What every handler needs from the Instance: policy, timers and its thread group."""

    def __init__(self, policy, timers, threads, dns=None, readiness=None):
        self.policy = policy      # app.policy.manager.PolicyManager
        self.dns = dns            # app.dns.server.DnsResolver (the built-in DNS)
        self.timers = timers      # common.signal.TimerWheel
        self.threads = threads    # common.task.ThreadGroup (joined on shutdown)
        # transport.internet.readiness.ReadWaiter, where idle relay readers park (None:
        # they block in recv, as in a context without one).
        self.readiness = readiness
