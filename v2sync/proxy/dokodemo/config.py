"""dokodemo-door settings (v2ray ``infra/conf/dokodemo.go``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from v2sync.common.errors import join_path
from v2sync.common.net import Address, Network, go_address
from v2sync.infra.conf.fields import (MAX_UINT16, get_bool, get_optional_uint, get_str,
                                      get_uint, parse_network_list, require_object)

@dataclass(frozen=True)
class DokodemoConfig:
    address: Optional[Address] = None  # None: only followRedirect can name a destination
    port: int = 0
    networks: Tuple[Network, ...] = (Network.TCP,)
    follow_redirect: bool = False
    user_level: int = 0
    timeout: Optional[int] = None  # deprecated; overrides connIdle at level 0

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "DokodemoConfig":
        settings = require_object(settings, path)
        address = get_str(settings, "address", path)
        return cls(
            address=go_address(address) if address else None,
            port=get_uint(settings, "port", path, maximum=MAX_UINT16),
            networks=parse_network_list(settings.get("network"), join_path(path, "network")),
            follow_redirect=get_bool(settings, "followRedirect", path),
            user_level=get_uint(settings, "userLevel", path),
            timeout=get_optional_uint(settings, "timeout", path),
        )
