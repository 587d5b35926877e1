"""Name resolution for dialing (freedom ``domainStrategy``; the DNS app replaces it later).

Resolution uses the system resolver via ``getaddrinfo``. A name is resolved once per
connection, and the answer is what gets dialed.
"""
from __future__ import annotations

import socket
from typing import List

from v2sync.common.errors import TransportError
from v2sync.common.net import Address, AddressKind
from v2sync.common.task import outside_slot

FAMILIES = {
    "UseIP": socket.AF_UNSPEC,
    "UseIPv4": socket.AF_INET,
    "UseIPv6": socket.AF_INET6,
    "AsIs": socket.AF_UNSPEC,
}


def resolve(domain: str, strategy: str = "AsIs", port: int = 0) -> List[Address]:
    """Addresses for ``domain`` filtered by ``strategy``, in resolver order (IPv4 first for UseIP)."""
    family = FAMILIES.get(strategy, socket.AF_UNSPEC)
    try:
        infos = outside_slot(socket.getaddrinfo, domain, port, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise TransportError(f"failed to resolve {domain}: {e}") from e
    seen: List[Address] = []
    for info in infos:
        addr = Address.parse(str(info[4][0]))  # an IP text; typeshed allows int
        if addr not in seen:
            seen.append(addr)
    if strategy == "UseIP":  # v2ray's UseIP prefers IPv4 answers, then IPv6
        seen.sort(key=lambda a: a.kind is not AddressKind.IPV4)
    if not seen:
        raise TransportError(f"no {strategy} address for {domain}")
    return seen
