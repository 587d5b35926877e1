"""dns outbound settings (v2ray ``infra/conf/dns_proxy.go``): where non-IP queries go."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from v2sync.common.errors import ConfigError, join_path
from v2sync.common.net import Address, Network, go_address
from v2sync.infra.conf.fields import MAX_UINT16, get_str, get_uint, require_object

NETWORKS = {"tcp": Network.TCP, "udp": Network.UDP}


@dataclass(frozen=True)
class DnsOutboundConfig:
    """Each field, when set, replaces that part of the original destination."""

    network: Optional[Network] = None
    address: Optional[Address] = None
    port: int = 0

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "DnsOutboundConfig":
        settings = require_object(settings, path)
        network = get_str(settings, "network", path).lower()
        if network and network not in NETWORKS:
            # 4.34 builds an unknown name as Network_Unknown, i.e. "keep the original".
            raise ConfigError(f"unknown network {network!r}", join_path(path, "network"),
                              expected='expected "tcp" or "udp"')
        address = get_str(settings, "address", path)
        return cls(
            network=NETWORKS.get(network),
            address=go_address(address) if address else None,
            port=get_uint(settings, "port", path, maximum=MAX_UINT16),
        )
