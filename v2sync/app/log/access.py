"""Access log lines in v2ray 4.34's format: source, status, target, the outbound's tag in
brackets when it has one, and the user's email (``common/log/access.go``).

``2026/11/24 19:36:20 tcp:127.0.0.1:48260 accepted tcp:example.com:443 [direct]``
"""
from __future__ import annotations

import logging
from typing import Optional

from v2sync.common.net import Destination
from v2sync.common.session import Session

ACCESS_LOGGER = "v2sync.access"


class AccessLog:
    def __init__(self, logger: logging.Logger = logging.getLogger(ACCESS_LOGGER)):
        self._log = logger

    def accepted(self, session: Session, target: Optional[Destination]) -> None:
        """``target``: what the inbound asked for (the HTTP inbound's URL where it has one)."""
        if self._log.isEnabledFor(logging.INFO):
            shown = session.access_to or target
            self._log.info("%s accepted %s%s", _source(session), shown, _suffix(session))


    def rejected(self, session: Session, reason: str) -> None:
        """4.34's line for a client its inbound refused: no target (hence two spaces)."""
        if self._log.isEnabledFor(logging.INFO):
            self._log.info("%s rejected  %s", _source(session), reason)


def _source(session: Session) -> str:
    return str(session.source) if session.source_with_network else session.source.host_port()


def _suffix(session: Session) -> str:
    detour = f" [{session.outbound_tag}]" if session.outbound_tag else ""
    shown = session.user_email if session.email_in_access_log else ""
    return detour + (f" email: {shown}" if shown else "")
