"""Stand-ins for the Instance's outbound manager in socket-free dispatcher tests."""
from __future__ import annotations

from typing import Any, Optional


class OneOutbound:
    """An OutboundManager with one handler: the default, and found by its ``tag``."""

    def __init__(self, handler: Any):
        self.handler = handler

    def default(self) -> Any:
        return self.handler

    def get(self, tag: str) -> Optional[Any]:
        return self.handler if tag == self.handler.tag else None
