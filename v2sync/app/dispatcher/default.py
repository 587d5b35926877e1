"""The default dispatcher (v2ray ``app/dispatcher/default.go``).

``dispatch`` returns the inbound's end of a fresh link at once; the outbound's end is served
in a tracked thread which, as in v2ray, first sniffs (if the inbound asked for it), then
routes, logs the access line and runs the chosen outbound.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, Optional

from v2sync.app.dispatcher.sniffer import (NEED_MORE, SNIFF_ATTEMPTS, SNIFF_BUFFER_SIZE,
                                          SNIFF_READ_TIMEOUT, SniffResult, override_domain,
                                          sniff)
from v2sync.app.log.access import AccessLog
from v2sync.app.policy.manager import PolicyManager
from v2sync.app.stats.manager import StatsManager
from v2sync.app.proxyman.outbound import OutboundHandler, OutboundManager
from v2sync.common.errors import V2SyncError
from v2sync.common.net import Destination, Network, go_address
from v2sync.common.session import Session
from v2sync.common.signal import ActivityTimer, TimerWheel, nothing
from v2sync.common.task import HAND_AHEAD, Steps, ThreadGroup, started_here
from v2sync.transport.link import Link, new_link_pair
from v2sync.transport.pipe import EOF, ReadTimeout

log = logging.getLogger(__name__)

class DefaultDispatcher:
    def __init__(self, outbounds: OutboundManager, policy: PolicyManager, threads: ThreadGroup,
                 access_log: AccessLog, router=None):
        self.outbounds = outbounds
        self.policy = policy
        self.threads = threads
        self.access_log = access_log
        self.router = router  # features.routing.Router, or None: everything to the default
        self.stats: Optional[StatsManager] = None  # set when the config has "stats"
        # Called with the outbound tag of each routing decision (the metrics endpoint's).
        self.on_routed: Optional[Callable[[str], None]] = None
        # The Instance's timer wheel (``_mark_live``); None: no shutdown grace to keep.
        self.timers: Optional[TimerWheel] = None
        self._links: Dict[int, Link] = {}  # outbound ends of live links, for shutdown
        self._lock = threading.Lock()

    def dispatch(self, session: Session, dest: Destination, early: bytes = b"",
                 start_here: bool = False) -> Link:
        session.target = dest
        policy = self.policy.for_level(session.user_level)
        up = down = None
        if self.stats is not None and session.user_email:
            # dispatcher/default.go getLink: the user's counters, by email, if the level asks.
            up, down = self.stats.traffic_pair("user", session.user_email,
                                               policy.stats_user_uplink,
                                               policy.stats_user_downlink)
        inbound_side, outbound_side = new_link_pair(self.policy.pipe_limit(policy),
                                                    session.name(), up, down)
        # The client's first bytes go in before the outbound starts (a fresh pipe takes one
        # write whatever its limit, and nothing can interrupt it before it is registered):
        # its dial then finds them and sends them at once. Handed on after the spawn, they
        # waited for the whole dial, which runs first (below).
        inbound_side.writer.write(early)
        with self._lock:
            self._links[session.id] = outbound_side
        here = start_here and dest.network is Network.TCP and not _sniffing_enabled(session)
        mark = self._mark_live(policy.conn_idle) if here else None
        name, steps = f"out-{session.name()}", self._run_outbound(session, outbound_side, mark)
        try:
            # The outbound goes first: its routing and dial are on the connection's path,
            # the inbound's relay set-up is not (it then reads, and the client's next bytes
            # are on their way meanwhile, or already here to be forwarded). A caller that
            # serves this one connection runs that start itself (``start_here``): one thread
            # hand-over less before the dial. Not while sniffing, which waits for bytes
            # the caller has yet to read.
            if here:
                self.threads.start_here(name, steps)
            else:
                self.threads.spawn_steps(name, steps, ahead=True)
        except RuntimeError:
            log.error("%s: cannot start outbound thread", session.name())
            if mark is not None:
                mark.cancel()
            self._forget(session)
            inbound_side.interrupt()
        return inbound_side

    def _mark_live(self, idle: float) -> Optional[ActivityTimer]:
        """A timer that stands for a connection whose outbound starts in the inbound's
        thread, until that outbound ends. Shutdown's grace waits while a live timer saw
        activity lately (``Instance._quiet``), and none of the connection's relays has one
        before its dial and server handshake are done: a SIGTERM then cut it at once, where
        a dial in a pooled thread ran beside the inbound relay's fresh timer. It never
        fires anything."""
        return self.timers.new_timer(idle, nothing) if self.timers is not None else None

    def _run_outbound(self, session: Session, link: Link,
                      mark: Optional[ActivityTimer] = None) -> Steps[None]:
        """The outbound's task, as steps: an idle relay reader parks, keeping no thread."""
        # The access line names the target the inbound asked for, sniffed or not: 4.34's
        # inbounds write their AccessMessage before the dispatcher sniffs.
        requested = session.target
        try:
            if _sniffing_enabled(session):
                self._sniff(session, link)
            handler = self._pick_outbound(session)
            if handler is None:
                # 4.34 routedDispatch: "default outbound handler not exist", then the
                # downlink is closed and the uplink interrupted; no access line is logged.
                log.info("%s: default outbound handler not exist", session.name())
                link.writer.close()
                link.reader.interrupt()
                return
            if started_here() and not handler.starts_here:
                # Its start may wait on the caller (see OutboundHandler), and is on the
                # connection's path: it goes first, as a spawned outbound does.
                yield HAND_AHEAD
            session.outbound_tag = handler.tag
            if self.on_routed is not None:
                self.on_routed(handler.tag)
            if not session.internal:
                self.access_log.accepted(session, requested)
            yield from handler.dispatch_steps(session, link)
        except V2SyncError as e:  # sniffing met an interrupted pipe, routing failed, ...
            log.info("%s: dispatch failed: %s", session.name(), e)
            link.interrupt()
        finally:
            self._forget(session)
            if mark is not None:
                mark.cancel()

    def _sniff(self, session: Session, link: Link) -> None:
        """Peek at the first bytes; put them back unchanged whatever the outcome."""
        seen = b""
        result: object = NEED_MORE
        for _ in range(SNIFF_ATTEMPTS):
            try:
                chunk = link.reader.read(timeout=SNIFF_READ_TIMEOUT)
            except ReadTimeout:
                continue
            if chunk is EOF:
                break  # the pipe stays closed: the outbound gets the bytes back, then EOF
            seen += chunk
            result = sniff(seen[:SNIFF_BUFFER_SIZE])
            if result is not NEED_MORE or len(seen) >= SNIFF_BUFFER_SIZE:
                break
        link.reader.unread(seen)
        if not isinstance(result, SniffResult):
            return  # no clue within two reads, or unknown content: route as is
        session.protocol = result.protocol
        domain = override_domain(result, session.sniffing.dest_override)
        if domain:  # the port is kept (default.go)
            target = session.destination()
            # Read as Go's ParseAddress: space around it trimmed, brackets dropped (default.go).
            session.target = Destination(go_address(domain), target.port, target.network)

    def _pick_outbound(self, session: Session) -> Optional[OutboundHandler]:
        if self.router is not None:
            decision = self.router.decide(session)
            session.resolved = decision.resolved or ()  # None: the router looked nothing up
            if decision.tag:
                handler = self.outbounds.get(decision.tag)
                if handler is not None:
                    return handler
                log.warning("%s: outbound %r not found, using the default", session.name(),
                            decision.tag)
        return self.outbounds.default()

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


def _sniffing_enabled(session: Session) -> bool:
    sniffing = session.sniffing
    return bool(sniffing is not None and sniffing.enabled and session.target is not None
                and session.target.network is Network.TCP)
