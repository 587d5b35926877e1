"""The default dispatcher (v2ray ``app/dispatcher/default.go``)."""
from __future__ import annotations

import logging
import threading
from typing import Dict, Optional

from v2sync.app.log.access import AccessLog
from v2sync.app.policy.manager import PolicyManager
from v2sync.app.proxyman.outbound import OutboundManager
from v2sync.common.net import Destination
from v2sync.common.session import Session
from v2sync.common.task import ThreadGroup
from v2sync.features.routing import Router
from v2sync.transport.link import Link, new_link_pair

log = logging.getLogger(__name__)


class DefaultDispatcher:
    def __init__(self, outbounds: OutboundManager, policy: PolicyManager, threads: ThreadGroup,
                 access_log: AccessLog, router: Optional[Router] = None):
        self.outbounds = outbounds
        self.policy = policy
        self.threads = threads
        self.access_log = access_log
        self.router = router  # the seam for routing: None sends everything to the default
        self._links: Dict[int, Link] = {}  # outbound ends of live links, for shutdown
        self._lock = threading.Lock()

    def dispatch(self, session: Session, dest: Destination) -> Link:
        session.target = dest
        limit = self.policy.pipe_limit(self.policy.for_level(session.user_level))
        inbound_side, outbound_side = new_link_pair(limit, session.name())
        handler = self._pick_outbound(session)
        session.outbound_tag = handler.tag
        self.access_log.accepted(session)
        with self._lock:
            self._links[session.id] = outbound_side
        try:
            self.threads.spawn(f"out-{session.name()}",
                               lambda: self._run_outbound(handler, session, outbound_side))
        except RuntimeError:
            log.error("%s: cannot start outbound thread", session.name())
            self._forget(session)
            inbound_side.interrupt()
        return inbound_side

    def _run_outbound(self, handler, session: Session, link: Link) -> None:
        try:
            handler.dispatch(session, link)
        finally:
            self._forget(session)

    def _forget(self, session: Session) -> None:
        with self._lock:
            self._links.pop(session.id, None)

    def interrupt_all(self) -> int:
        """Abort every live link (shutdown after the grace period)."""
        with self._lock:
            links = list(self._links.values())
        for link in links:
            link.interrupt()
        return len(links)

    def _pick_outbound(self, session: Session):
        if self.router is not None:
            tag = self.router.pick_route(session)
            if tag:
                handler = self.outbounds.get(tag)
                if handler is not None:
                    return handler
                log.warning("%s: outbound %r not found, using the default", session.name(), tag)
        return self.outbounds.default()
