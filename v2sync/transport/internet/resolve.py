"""Name resolution for dialing (freedom ``domainStrategy``; the DNS app replaces it later).

Resolution uses the system resolver via ``getaddrinfo``. A name is resolved once per
connection, and the answer is what gets dialed.
"""
from __future__ import annotations

import socket
from typing import Any, Iterable, List, Optional, Tuple

from v2sync.common.errors import TransportError
from v2sync.common.net import Address, AddressKind
from v2sync.common.task import outside_slot

# The address kinds each strategy dials (AsIs: whatever the name resolves to).
KINDS = {
    "UseIP": (AddressKind.IPV4, AddressKind.IPV6),
    "UseIPv4": (AddressKind.IPV4,),
    "UseIPv6": (AddressKind.IPV6,),
    "AsIs": (AddressKind.IPV4, AddressKind.IPV6),
}
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
        infos = system_lookup(go_dial_host(domain, port), port, family)
    except (OSError, UnicodeError) as e:  # OSError: also a process out of descriptors,
        # where getaddrinfo's first use imports the idna codec (found by a review)
        raise TransportError(f"failed to resolve {domain}: {e}") from e
    seen: List[Address] = []
    for info in infos:
        addr = Address.parse(str(info[4][0]))  # an IP text; typeshed allows int
        if addr not in seen:
            seen.append(addr)
    # UseIP tries IPv4 answers first, then IPv6, in turn; 4.34's freedom draws one answer
    # at random for each of its five dial attempts, so it may miss a one-family service.
    if strategy == "UseIP":
        seen.sort(key=lambda a: a.kind is not AddressKind.IPV4)
    if not seen:
        raise TransportError(f"no {strategy} address for {domain}")
    return seen


def system_lookup(host: str, port: Optional[int], family: int) -> List[Tuple[Any, ...]]:
    """``getaddrinfo`` as Go's resolver would answer it: an IP only in its standard form.
    glibc also reads inet_aton's legacy forms as IPv4 ("127.1", "2130706433",
    "0x7f.0.0.1", "0177.0.0.1"), which routing saw as names, so no ``ip`` rule caught
    them; Go asks its DNS for such a name, which knows none."""
    if not Address.parse(host).is_ip and _inet_aton_reads(host):
        raise socket.gaierror(socket.EAI_NONAME, f"lookup {host}: no such host")
    return outside_slot(socket.getaddrinfo, host, port, family, socket.SOCK_STREAM)


def _inet_aton_reads(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return False
    return True


def go_dial_host(domain: str, port: int) -> str:
    """The host Go's ``Dial`` finds in a name joined with its port (``SplitHostPort``): a
    name that came in as a bare name (a SOCKS4a host) may be ``[::1]``, whose brackets go,
    or hold a colon, which Go refuses."""
    if domain.startswith("[") and domain.endswith("]"):
        return domain[1:-1]
    if ":" in domain:
        raise TransportError(f"address {domain}:{port}: too many colons in address")
    return domain


def of_families(addresses: Iterable[Address], want_ipv4: bool,
                want_ipv6: bool) -> Tuple[Address, ...]:
    """The IPs of the wanted families, IPv4 first (the order within each kept)."""
    kept = [a for a in addresses if (a.kind is AddressKind.IPV4 and want_ipv4)
            or (a.kind is AddressKind.IPV6 and want_ipv6)]
    kept.sort(key=lambda a: a.kind is not AddressKind.IPV4)  # stable
    return tuple(kept)


def of_strategy(addresses: Iterable[Address], strategy: str) -> Tuple[Address, ...]:
    """The IPs ``strategy`` dials, IPv4 first (none: the caller resolves again)."""
    kinds = KINDS.get(strategy, KINDS["AsIs"])
    return of_families(addresses, AddressKind.IPV4 in kinds, AddressKind.IPV6 in kinds)
