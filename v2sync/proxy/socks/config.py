"""SOCKS inbound settings (v2ray ``infra/conf/socks.go``, ``proxy/socks/config.proto``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

from v2sync.common.net import go_address
from v2sync.infra.conf.fields import (get_accounts, get_bool, get_optional_uint, get_str,
                                      get_uint, require_object)

AUTH_NOAUTH = "noauth"
AUTH_PASSWORD = "password"
AUTH_METHODS = (AUTH_NOAUTH, AUTH_PASSWORD)


@dataclass(frozen=True)
class SocksServerConfig:
    """``auth`` is "noauth" or "password"; SOCKS4 is only served with noauth (runtime rule)."""

    auth: str = AUTH_NOAUTH
    accounts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}),
                                        hash=False)
    udp: bool = False
    ip: Optional[str] = None  # UDP ASSOCIATE reply address; None: see notes §3
    user_level: int = 0
    timeout: Optional[int] = None  # deprecated; overrides connIdle at level 0

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "SocksServerConfig":
        settings = require_object(settings, path)
        auth = get_str(settings, "auth", path, AUTH_NOAUTH)
        if auth not in AUTH_METHODS:
            # socks.go: any other value (even "Password") means noauth. Validation already
            # warned about it (schema.json x-known), so this stays quiet.
            auth = AUTH_NOAUTH
        ip = get_str(settings, "ip", path) or None
        return cls(
            auth=auth,
            accounts=get_accounts(settings, "accounts", path),
            udp=get_bool(settings, "udp", path),
            ip=go_address(ip).value if ip else None,
            user_level=get_uint(settings, "userLevel", path),
            timeout=get_optional_uint(settings, "timeout", path),
        )
