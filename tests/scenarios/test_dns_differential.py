"""The built-in DNS, by v2ray 4.34 and v2sync alike.

- Its ``localhost`` server (the system resolver), asked through a ``dns`` outbound: a name
  /etc/hosts knows in one family only gets a NOERROR answer with no records for the other
  family (4.34's localdns ErrEmptyResponse), not silence, and its address for the family it
  has. Only names in /etc/hosts are asked, so no query leaves the machine.
- ``hosts`` values read as Go's ParseAddress reads them.
- Its own queries, routed with ``dns.tag`` as their inbound tag.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import dns.message
import dns.query
import dns.rcode
import pytest

from app.dns.dns_test_server import DnsTestServer
from routing_helpers import dns_server
from scenarios.differential import RoutedPair, Request, TagSink, asset_dir, asset_env, describe
from support.peers import free_port
from support.procs import V2RayProcess, V2SyncProcess

IO_TIMEOUT = 5.0
ROUTED_NAME = "routed.test"
SOCKS_INBOUNDS = [{"tag": "socks-in", "protocol": "socks", "settings": {"auth": "noauth"}}]
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


Query = Tuple[str, str]  # (name, record type)


def answers(process_class: Any, queries: List[Query],
            dns_section: Optional[Dict[str, Any]] = None,
            env: Optional[Dict[str, str]] = None) -> List[Tuple[str, List[str]]]:
    """(rcode, records) for each query, asked through a dns outbound of a proxy whose
    ``dns`` section is ``dns_section`` (default: the system resolver only)."""
    port = free_port()
    section = config(port)
    if dns_section is not None:
        section["dns"] = dns_section
    seen = []
    with process_class(section, env=env):
        for name, rdtype in queries:
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
    queries = [(name, has), (name, lacks)]
    ours = answers(V2SyncProcess, queries)
    assert ours == answers(V2RayProcess, queries)
    assert ours[1] == ("NOERROR", [])
    assert ours[0][0] == "NOERROR" and ours[0][1]


# Values as Go's net.ParseAddress reads them: white space around an IP is trimmed when the
# text starts or ends with something other than a letter or digit, brackets are dropped.
HOSTS_VALUES = {"spaced.example": " 127.0.0.29", "tabbed.example": "127.0.0.30\t",
                "bracketed.example": "[::1]", "inner.example": "[ 127.0.0.31 ]"}


def test_hosts_values_as_4_34(v2ray_bin: str) -> None:
    section = {"hosts": HOSTS_VALUES, "servers": ["localhost"]}
    queries = [(name, "AAAA" if name.startswith("bracketed") else "A")
               for name in sorted(HOSTS_VALUES)]
    ours = answers(V2SyncProcess, queries, section)
    assert ours == answers(V2RayProcess, queries, section)
    assert ours == [("NOERROR", ["::1"]), ("NOERROR", ["127.0.0.31"]),
                    ("NOERROR", ["127.0.0.29"]), ("NOERROR", ["127.0.0.30"])]


def test_the_dns_queries_are_routed_as_4_34_routes_them(v2ray_bin: str, tmp_path) -> None:
    """4.34 sends the DNS's own queries through the router, tagged ``dns.tag``: a rule on
    that tag sends them to server B (a freedom redirect) although ``servers`` names A. The
    name resolves to B's answer, where the sink listens, in both."""
    with DnsTestServer({ROUTED_NAME: ["127.0.0.11"]}) as server_a, \
            DnsTestServer({ROUTED_NAME: ["127.0.0.1"]}) as server_b, TagSink("b") as sink:
        outbounds = [{"tag": "direct", "protocol": "freedom",
                      "settings": {"domainStrategy": "UseIPv4"}},
                     {"tag": "to-b", "protocol": "freedom",
                      "settings": {"redirect": f"127.0.0.1:{server_b.port}"}}]
        routing = {"rules": [{"type": "field", "inboundTag": ["dns-app"], "outboundTag": "to-b"}]}
        dns_section = {"tag": "dns-app", "servers": [dns_server(server_a.port)]}
        with RoutedPair(SOCKS_INBOUNDS, [], routing, assets=asset_dir(tmp_path), dns=dns_section,
                        extra_outbounds=outbounds, v2ray_bin=v2ray_bin) as pair:
            request = Request("socks-in", ROUTED_NAME, sink.port)
            answers = pair.route(request)
    assert answers == ("b", "b"), describe(request, answers, pair)
    assert server_a.count() == 0 and server_b.count(ROUTED_NAME) >= 2


# Hosts keys with Go regexps (RE2 syntax, as 4.34 compiles them) and a dotless rule whose
# text is read as a regexp too, unescaped (dns.go): (key, value, name asked).
REGEXP_HOSTS = [("regexp:^[[:alpha:]]+\\.posix$", "127.0.0.41", "abc.posix"),
                ("regexp:^x{,2}\\.brace$", "127.0.0.42", "x{,2}.brace"),
                ("dotless:ab+c", "127.0.0.43", "xabbbcx")]


def test_hosts_regexp_keys_as_4_34(v2ray_bin: str) -> None:
    section = {"hosts": {key: value for key, value, _ in REGEXP_HOSTS}, "servers": ["localhost"]}
    queries = [(name, "A") for _, _, name in REGEXP_HOSTS]
    ours = answers(V2SyncProcess, queries, section)
    assert ours == answers(V2RayProcess, queries, section)
    assert ours == [("NOERROR", [value]) for _, value, _ in REGEXP_HOSTS]


def test_geosite_and_geoip_lists_as_4_34(v2ray_bin: str, tmp_path) -> None:
    """Lists from the test vectors in hosts keys, servers' ``domains`` and ``expectIps``
    (v2sync refused them all before): a hosts list answers; a name in server B's
    ``geosite:`` list goes to B first (A would answer otherwise); B's answer outside its
    ``geoip:private`` moves the lookup on to A."""
    names = {"x.doubleclick.example": "127.0.0.61", "ad7.example.net": "10.0.0.7",
             "x.ads.example.net": "192.0.2.1"}
    with DnsTestServer({name: ["10.0.0.99"] for name in names}) as server_a, \
            DnsTestServer({k: [v] for k, v in names.items()}) as server_b:
        section = {"hosts": {"geosite:category-ads": "127.0.0.61"},
                   "servers": [{"address": "127.0.0.1", "port": server_a.port},
                               {"address": "127.0.0.1", "port": server_b.port,
                                "domains": ["geosite:test@ads"],
                                "expectIps": ["geoip:private"]}]}
        env = asset_env(asset_dir(tmp_path / "assets"))
        queries = [(name, "A") for name in names]
        ours = answers(V2SyncProcess, queries, section, env)
        assert ours == answers(V2RayProcess, queries, section, env)
    assert ours == [("NOERROR", ["127.0.0.61"]), ("NOERROR", ["10.0.0.7"]),
                    ("NOERROR", ["10.0.0.99"])]


OWN_NAME = "own.test"


def own_query_answer(process_class: Any, upstream_port: int, dns_port: int) -> Tuple[str, List[str]]:
    """An A query through a dns outbound that the DNS's own queries (``dns.tag``) reach too."""
    port = free_port()
    section = {"log": {"loglevel": "warning"},
               "dns": {"tag": "dns-own", "servers": [dns_server(dns_port)]},
               "inbounds": [{"tag": "dns-in", "protocol": "dokodemo-door", "listen": "127.0.0.1",
                             "port": port, "settings": {"address": "127.0.0.1",
                                                        "port": upstream_port, "network": "udp"}}],
               "outbounds": [{"tag": "dns-out", "protocol": "dns"},
                             {"tag": "direct", "protocol": "freedom"}],
               "routing": {"rules": [{"type": "field", "inboundTag": ["dns-in", "dns-own"],
                                      "outboundTag": "dns-out"}]}}
    with process_class(section):
        reply = dns.query.udp(dns.message.make_query(OWN_NAME, "A"), "127.0.0.1", port=port,
                              timeout=IO_TIMEOUT)
    return (dns.rcode.to_text(reply.rcode()),
            sorted(item.to_text() for rrset in reply.answer for item in rrset))


def test_the_dns_own_queries_pass_the_dns_outbound_as_they_are_as_4_34(v2ray_bin: str) -> None:
    """4.34's dns outbound sends on, unanswered, a query whose inbound tag is ``dns.tag``
    (isOwnLink): the built-in DNS's own query to its server. v2sync answered it from the
    built-in DNS, which asked again through the same outbound, without end (thousands of
    threads in seconds, found by a DNS review)."""
    with DnsTestServer({OWN_NAME: ["127.0.0.11"]}) as dialled, \
            DnsTestServer({OWN_NAME: ["127.0.0.12"]}) as configured:
        ours = own_query_answer(V2SyncProcess, dialled.port, configured.port)
        assert ours == own_query_answer(V2RayProcess, dialled.port, configured.port)
        assert ours == ("NOERROR", ["127.0.0.12"])
        assert dialled.count() == 0


def raw_answer(process_class: Any, query: bytes) -> Optional[bytes]:
    """The dns outbound's reply to ``query`` sent as it is (None: no reply)."""
    port = free_port()
    with process_class(config(port)), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.sendto(query, ("127.0.0.1", port))
        try:
            return sock.recv(4096)
        except socket.timeout:
            return None


def test_a_query_broken_after_its_first_question_is_answered_as_4_34() -> None:
    """4.34's parseIPQuery reads the header and the first question only: an A query whose
    header promises an additional record it lacks is still answered from the DNS (v2sync
    parsed it whole, failed, and sent it on)."""
    query = dns.message.make_query("localhost", "A").to_wire()
    broken = query[:10] + b"\x00\x01" + query[12:]  # ARCOUNT 1, no record
    ours, theirs = raw_answer(V2SyncProcess, broken), raw_answer(V2RayProcess, broken)
    assert ours is not None and theirs is not None
    ours_msg, theirs_msg = dns.message.from_wire(ours), dns.message.from_wire(theirs)
    # the same message; 4.34 compresses the answer's name, v2sync writes it out
    assert ours_msg == theirs_msg and ours_msg.flags == theirs_msg.flags
    assert ours_msg.answer[0].to_text().endswith("127.0.0.1")


def fast_answer_behind_a_slow_one(process_class: Any, answering: int, silent: int) -> float:
    """Seconds until ``fast.test`` is answered, asked from one socket right after a name
    whose server never answers."""
    port = free_port()
    section = config(port)
    section["dns"] = {"servers": [dns_server(answering),
                                  {**dns_server(silent), "domains": ["full:slow.test"]}]}
    fast = dns.message.make_query("fast.test", "A")
    with process_class(section), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        started = time.monotonic()
        sock.sendto(dns.message.make_query("slow.test", "A").to_wire(), ("127.0.0.1", port))
        sock.sendto(fast.to_wire(), ("127.0.0.1", port))
        while dns.message.from_wire(sock.recv(4096)).id != fast.id:
            pass
        return time.monotonic() - started


def test_a_name_never_answered_holds_up_no_other_as_in_4_34() -> None:
    """4.34 answers each A/AAAA query in its own goroutine; v2sync answered a session's in
    turn, so a client asking from one socket (a forwarding resolver behind a DNS hijack)
    waited 4 s for each name behind one its server never answers (found by a review)."""
    with DnsTestServer({"fast.test": ["127.0.0.21"]}) as answering, \
            DnsTestServer(silent=True) as silent:
        waits = {name: fast_answer_behind_a_slow_one(cls, answering.port, silent.port)
                 for name, cls in (("v2sync", V2SyncProcess), ("v2ray", V2RayProcess))}
    assert max(waits.values()) < 1.0, waits
