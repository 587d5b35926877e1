"""Access log lines in v2ray's format.

``2026/11/24 19:36:20 127.0.0.1:48260 accepted tcp:example.com:443 [socks-in -> direct]``
"""
from __future__ import annotations

import logging

from v2sync.common.session import Session

ACCESS_LOGGER = "v2sync.access"


class AccessLog:
    def __init__(self, logger: logging.Logger = logging.getLogger(ACCESS_LOGGER)):
        self._log = logger

    def accepted(self, session: Session) -> None:
        if self._log.isEnabledFor(logging.INFO):
            self._log.info("%s accepted %s%s", session.source.host_port(), session.target,
                           self._suffix(session))

    def rejected(self, session: Session, reason: str) -> None:
        if self._log.isEnabledFor(logging.INFO):
            target = session.target if session.target is not None else ""
            self._log.info("%s rejected %s %s", session.source.host_port(), target, reason)

    @staticmethod
    def _suffix(session: Session) -> str:
        route = f" [{session.inbound_tag} -> {session.outbound_tag}]"
        shown = session.user_email if session.email_in_access_log else ""
        return route + (f" email: {shown}" if shown else "")
