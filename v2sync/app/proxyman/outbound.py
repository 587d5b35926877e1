"""Outbound handlers and their manager (v2ray ``app/proxyman/outbound``).

A handler whose config enables ``mux`` carries every link as a Mux.cool sub-connection
(``common.mux.client``); otherwise it runs its proxy once per link (handler.go Dispatch).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

from v2sync.common.errors import (MAX_CHAIN, NoServerReachable, PipeInterrupted,
                                  ServerHandshakeError, V2SyncError)
from v2sync.common.mux.client import ClientManager
from v2sync.common.session import Session
from v2sync.common.task import Steps, at_once
from v2sync.infra.conf.model import MuxConfig
from v2sync.transport.link import Link

log = logging.getLogger(__name__)


class OutboundHandler:
    def __init__(self, tag: str, proxy, mux: Optional[MuxConfig] = None, ctx=None):
        self.tag = tag
        self.proxy = proxy
        self.mux: Optional[ClientManager] = None
        if mux is not None and mux.enabled:
            self.mux = ClientManager(self.run_proxy_steps, ctx, mux.concurrency, tag or "out")
        # May its start run in the inbound's thread (``ThreadGroup.start_here``)? For a
        # proxy whose steps go from the dial and its server's handshake to the relay with
        # no wait on the client (``starts_in_caller``); not through mux, whose connection
        # is shared, nor for the HTTP outbound, which waits for the client's first bytes
        # before it dials.
        self.starts_here = self.mux is None and getattr(proxy, "starts_in_caller", False)

    def dispatch_steps(self, session: Session, link: Link) -> Steps[None]:
        """Carry ``link`` (handler.go Dispatch), as steps: a proxy with ``process_steps``
        parks its idle reader."""
        if self.mux is None:
            yield from self.run_proxy_steps(session, link)
            return
        try:
            yield from self.mux.dispatch_steps(session, link)
        except V2SyncError as e:  # handler.go: "failed to process mux outbound traffic"
            log.log(_level(e), "%s: outbound %s (mux) failed: %s", session.name(),
                    self.tag or "-", e)
            link.writer.interrupt()
            link.reader.interrupt()

    def run_proxy_steps(self, session: Session, link: Link) -> Steps[None]:
        """Run the proxy; close the downlink on success, interrupt it on failure (handler.go)."""
        try:
            yield from self._process_steps(session, link)
        except V2SyncError as e:
            log.log(_level(e), "%s: outbound %s failed: %s", session.name(),
                    self.tag or "-", e)
            link.writer.interrupt()
        except Exception:
            log.exception("%s: outbound %s crashed", session.name(), self.tag or "-")
            link.writer.interrupt()
        else:
            link.writer.close()
        finally:
            link.reader.interrupt()

    def _process_steps(self, session: Session, link: Link) -> Steps[None]:
        """The proxy's ``process_steps`` if it has one, else its ``process`` in one step
        (``features.proxy.OutboundProxy``)."""
        steps = getattr(self.proxy, "process_steps", None)
        if steps is not None:
            return steps(session, link)
        return at_once(lambda: self.proxy.process(session, link))


class OutboundManager:
    """Handlers by tag; the first one added is the default (v2ray: first outbound wins)."""

    def __init__(self) -> None:
        self._ordered: List[OutboundHandler] = []
        self._by_tag: Dict[str, OutboundHandler] = {}
        self._default: Optional[OutboundHandler] = None
        # The tags in order, a new tuple at each change (the router's balancers notice).
        self.tags: Tuple[str, ...] = ()

    def add(self, handler: OutboundHandler) -> None:
        if handler.tag and handler.tag in self._by_tag:
            raise V2SyncError(f"duplicate outbound tag {handler.tag!r}")
        self._ordered.append(handler)
        if handler.tag:
            self._by_tag[handler.tag] = handler
            self.tags = (*self.tags, handler.tag)
        if self._default is None:
            self._default = handler

    def remove(self, tag: str) -> None:
        """The API's RemoveOutbound: later routing no longer finds it. Removing the default
        leaves none, as in 4.34 (``RemoveHandler``): what no rule routes is then closed, never
        sent on through whichever outbound comes next (which may be a direct one). An
        unknown tag is no error, as in 4.34."""
        handler = self._by_tag.pop(tag, None)
        if handler is None:
            return
        if handler is self._default:
            self._default = None
        # A new list, not an edit: close() on another thread sees the old one or the new one.
        self._ordered = [h for h in self._ordered if h is not handler]
        self.tags = tuple(t for t in self.tags if t != tag)
        close = getattr(handler.proxy, "close", None)
        if close is not None:
            close()

    def get(self, tag: str) -> Optional[OutboundHandler]:
        return self._by_tag.get(tag)

    def default(self) -> Optional[OutboundHandler]:
        """The first handler added, unless the API removed it; None when there is none (a
        config may have no outbound, as in 4.34, whose GetDefaultHandler then returns nil)."""
        return self._default

    def close(self) -> None:
        for handler in self._ordered:
            if handler.mux is not None:
                handler.mux.close()
            close = getattr(handler.proxy, "close", None)
            if close is not None:
                close()


def _level(error: BaseException) -> int:
    """Warning when no server could be reached or the handshake with one failed (anywhere
    in the error's causes), as 4.34 logs them; else Info. A setup the link's interrupt cut
    short (a shutdown, the client gone: PipeInterrupted) is Info whatever it broke."""
    if isinstance(error, PipeInterrupted):
        return logging.INFO
    for _ in range(MAX_CHAIN):
        if isinstance(error, (NoServerReachable, ServerHandshakeError)):
            return logging.WARNING
        if error.__cause__ is None:
            break
        error = error.__cause__
    return logging.INFO
