"""HTTP proxy inbound settings (v2ray ``infra/conf/http.go``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

from v2sync.infra.conf.fields import (get_accounts, get_bool, get_optional_uint, get_uint,
                                      require_object)


@dataclass(frozen=True)
class HttpServerConfig:
    """Basic auth is required only when ``accounts`` is non-empty (http/server.go)."""

    accounts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}),
                                        hash=False)
    allow_transparent: bool = False  # relative URLs without it get 400
    user_level: int = 0
    timeout: Optional[int] = None  # deprecated; overrides connIdle at level 0

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "HttpServerConfig":
        settings = require_object(settings, path)
        return cls(
            accounts=get_accounts(settings, "accounts", path),
            allow_transparent=get_bool(settings, "allowTransparent", path),
            user_level=get_uint(settings, "userLevel", path),
            timeout=get_optional_uint(settings, "timeout", path),
        )
