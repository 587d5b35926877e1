"""The built-in DNS's ``localhost`` server (the system resolver), asked through a ``dns``
outbound, by v2ray 4.34 and v2sync alike: a name /etc/hosts knows in one family only gets
a NOERROR answer with no records for the other family (4.34's localdns ErrEmptyResponse),
not silence, and its address for the family it has. Only names in /etc/hosts are asked,
so no query leaves the machine."""
from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Optional, Set, Tuple

import dns.message
import dns.query
import dns.rcode
import pytest

from support.peers import free_port
from support.procs import V2RayProcess, V2SyncProcess

IO_TIMEOUT = 5.0
HOSTS = "/etc/hosts"


def single_family_name() -> Optional[Tuple[str, str, str]]:
    """(name, the type it has, the type it lacks) for a name of one family in /etc/hosts."""
    families: Dict[str, Set[int]] = {}
    with open(HOSTS, encoding="utf-8", errors="replace") as hosts:
        for line in hosts:
            fields = line.split("#", 1)[0].split()
            try:
                version = ipaddress.ip_address(fields[0]).version if fields else 0
            except ValueError:
                continue
            for name in fields[1:]:
                families.setdefault(name.lower(), set()).add(version)
    for name, seen in sorted(families.items()):
        if seen == {4} and "." not in name:
            return name, "A", "AAAA"
    for name, seen in sorted(families.items()):
        if seen == {6} and "." not in name:
            return name, "AAAA", "A"
    return None


def config(port: int) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "dns": {"servers": ["localhost"]},
            "inbounds": [{"tag": "dns-in", "protocol": "dokodemo-door", "listen": "127.0.0.1",
                          "port": port, "settings": {"address": "127.0.0.1", "port": 53,
                                                     "network": "udp"}}],
            "outbounds": [{"tag": "dns-out", "protocol": "dns"}]}


def answers(process_class: Any, name: str, rdtypes: List[str]) -> List[Tuple[str, List[str]]]:
    port = free_port()
    seen = []
    with process_class(config(port)):
        for rdtype in rdtypes:
            reply = dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port,
                                  timeout=IO_TIMEOUT)
            records = sorted(item.to_text() for rrset in reply.answer for item in rrset)
            seen.append((dns.rcode.to_text(reply.rcode()), records))
    return seen


def test_the_system_resolver_server_as_4_34(v2ray_bin: str) -> None:
    found = single_family_name()
    if found is None:
        pytest.skip(f"{HOSTS} has no dotless name of one address family")
    name, has, lacks = found
    ours = answers(V2SyncProcess, name, [has, lacks])
    assert ours == answers(V2RayProcess, name, [has, lacks])
    assert ours[1] == ("NOERROR", [])
    assert ours[0][0] == "NOERROR" and ours[0][1]


# Values as Go's net.ParseAddress reads them: white space around an IP is trimmed when the
# text starts or ends with something other than a letter or digit, brackets are dropped.
HOSTS_VALUES = {"spaced.example": " 127.0.0.29", "tabbed.example": "127.0.0.30\t",
                "bracketed.example": "[::1]", "inner.example": "[ 127.0.0.31 ]"}


def test_hosts_values_as_4_34(v2ray_bin: str) -> None:
    def run(process_class: Any) -> List[Tuple[str, List[str]]]:
        port = free_port()
        section = config(port)
        section["dns"] = {"hosts": HOSTS_VALUES, "servers": ["localhost"]}
        seen = []
        with process_class(section):
            for name in sorted(HOSTS_VALUES):
                rdtype = "AAAA" if name.startswith("bracketed") else "A"
                reply = dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1",
                                      port=port, timeout=IO_TIMEOUT)
                seen.append((dns.rcode.to_text(reply.rcode()),
                             sorted(item.to_text() for rrset in reply.answer for item in rrset)))
        return seen
    ours = run(V2SyncProcess)
    assert ours == run(V2RayProcess)
    assert ours == [("NOERROR", ["::1"]), ("NOERROR", ["127.0.0.31"]),
                    ("NOERROR", ["127.0.0.29"]), ("NOERROR", ["127.0.0.30"])]
