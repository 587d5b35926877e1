"""Which address freedom dials for a name, by v2ray 4.34 and v2sync alike.

The built-in DNS (a test server) answers ``localhost`` with 127.0.0.11, where nothing
listens; the system resolver answers 127.0.0.1, where a sink does. So the sink's tag says
the system resolver was used and "(closed)" says the built-in DNS was. As in 4.34's
freedom.go: AsIs dials the name (the system resolver), even when the router looked it up
with the built-in DNS; UseIPv4 asks the built-in DNS and, when it has no usable answer,
dials the name as AsIs does.
"""
from __future__ import annotations

import shlex
import socket
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest
import socks

from app.dns.dns_test_server import DnsTestServer
from routing_helpers import dns_server
from scenarios.differential import RoutedPair, Request, TagSink, asset_dir, describe
from support.peers import free_port
from support.procs import V2RayProcess, V2SyncProcess

NAME = "localhost"  # in every /etc/hosts
DNS_ANSWER = "127.0.0.11"
RCODE_NXDOMAIN = 3
SYSTEM = "system"
INBOUNDS = [{"tag": "socks-in", "protocol": "socks", "settings": {"auth": "noauth"}}]


def freedom(strategy: str) -> Dict[str, Any]:
    return {"tag": "direct", "protocol": "freedom", "settings": {"domainStrategy": strategy}}


CASES = {
    # routing strategy, freedom strategy, DNS server options, server rcode
    "router resolved, freedom AsIs": ("IPOnDemand", "AsIs", {}, 0),
    "router resolved when nothing matched, freedom AsIs": ("IPIfNonMatch", "AsIs", {}, 0),
    "freedom UseIPv4, NXDOMAIN": ("AsIs", "UseIPv4", {}, RCODE_NXDOMAIN),
    "freedom UseIPv4, answer outside expectIps": ("AsIs", "UseIPv4",
                                                   {"expectIps": ["10.0.0.0/8"]}, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_freedom_dials_names_as_4_34(case: str, v2ray_bin: str, tmp_path) -> None:
    strategy, dial_strategy, server_options, rcode = CASES[case]
    routing = {"domainStrategy": strategy,
               "rules": [{"type": "field", "ip": ["10.99.0.0/16"], "outboundTag": "block"}]}
    with DnsTestServer({NAME: [DNS_ANSWER]}, rcode=rcode) as dns, TagSink(SYSTEM) as sink:
        servers = [dns_server(dns.port, **server_options)]
        with RoutedPair(INBOUNDS, [], routing, assets=asset_dir(tmp_path), dns={"servers": servers},
                        extra_outbounds=[freedom(dial_strategy)], v2ray_bin=v2ray_bin) as pair:
            request = Request("socks-in", NAME, sink.port)
            answers = pair.route(request)
    assert answers == (SYSTEM, SYSTEM), describe(request, answers, pair)


@pytest.mark.parametrize("host", ["0.0.0.0", " 127.0.0.2"])
def test_redirect_hosts_as_4_34(host: str, v2ray_bin: str, tmp_path) -> None:
    """freedom.go keeps the original host for a redirect to 0.0.0.0 (isValidAddress refuses
    AnyIP), and ParseAddress trims the space around an IP: both reach the sink listening on
    the original host, 127.0.0.2, at the redirect's port."""
    with TagSink("original-host", host="127.0.0.2") as sink:
        redirect = {"tag": "direct", "protocol": "freedom",
                    "settings": {"redirect": f"{host}:{sink.port}"}}
        with RoutedPair(INBOUNDS, [], {"rules": []}, assets=asset_dir(tmp_path),
                        extra_outbounds=[redirect], v2ray_bin=v2ray_bin) as pair:
            request = Request("socks-in", "127.0.0.2", 9)
            answers = pair.route(request)
    assert answers == ("original-host", "original-host"), describe(request, answers, pair)


DUAL_NAME = "dual.test"


def _in_mount_namespace(process_class: type, hosts: Path) -> type:
    """``process_class`` started in a mount namespace of its own whose /etc/hosts is
    ``hosts`` (the machine's file is not touched)."""
    class InNamespace(process_class):  # type: ignore[misc, valid-type]
        def command(self, config_path: Path) -> List[str]:
            inner = shlex.join(super().command(config_path))
            return ["unshare", "-m", "sh", "-c",
                    f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && exec {inner}"]
    return InNamespace


def _udp_answerer(family: int, host: str, port: int, tag: bytes) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(0.1)

    def serve() -> None:
        for _ in range(600):  # at most ~60 s
            try:
                _, peer = sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return  # closed
            sock.sendto(tag, peer)
    threading.Thread(target=serve, name=f"udp-{tag.decode()}", daemon=True).start()
    return sock


def _udp_answer(process_class: type, port: int, strategy: str = "AsIs",
                send_through: str = "") -> str:
    socks_port = free_port()
    out: Dict[str, Any] = {"protocol": "freedom", "settings": {"domainStrategy": strategy}}
    if send_through:
        out["sendThrough"] = send_through
    config = {"log": {"loglevel": "warning", "access": "none"},
              "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": socks_port,
                            "settings": {"auth": "noauth", "udp": True, "ip": "127.0.0.1"}}],
              "outbounds": [out]}
    with process_class(config), socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", socks_port)
        sock.settimeout(5)
        sock.sendto(b"which?", (DUAL_NAME, port))
        try:
            return sock.recvfrom(64)[0].decode()
        except socket.timeout:
            return "(no answer)"


# freedom's strategy and sendThrough -> the family the datagram goes to
DUAL_STACK_CASES = {
    # Go's ResolveUDPAddr takes the IPv4 answer; v2sync once took getaddrinfo's first (::1),
    # so a service listening on IPv4 only got nothing
    "AsIs": ("AsIs", "", "ipv4"),
    # freedom.go resolveIP looks up the sendThrough's family only: v2sync once looked up
    # both and sent from ::1 to 127.0.0.1 (lost), or AAAA only from 127.0.0.1 (unreachable)
    "UseIP from ::1": ("UseIP", "::1", "ipv6"),
    "UseIPv6 from 127.0.0.1": ("UseIPv6", "127.0.0.1", "ipv4"),
}


@pytest.mark.parametrize("case", list(DUAL_STACK_CASES))
def test_udp_to_a_dual_stack_name_goes_where_4_34_sends_it(case: str, v2ray_bin: str,
                                                           tmp_path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    strategy, send_through, expected = DUAL_STACK_CASES[case]
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {DUAL_NAME}\n::1 {DUAL_NAME}\n")
    port = free_port()
    answerers = [_udp_answerer(socket.AF_INET, "127.0.0.1", port, b"ipv4"),
                 _udp_answerer(socket.AF_INET6, "::1", port, b"ipv6")]
    try:
        theirs = _udp_answer(_in_mount_namespace(V2RayProcess, hosts), port, strategy,
                             send_through)
        ours = _udp_answer(_in_mount_namespace(V2SyncProcess, hosts), port, strategy,
                           send_through)
    finally:
        for sock in answerers:
            sock.close()
    assert ours == theirs == expected


# inet_aton's legacy forms of 127.0.0.1: the system's getaddrinfo reads them as that IP, Go's
# resolver as names to ask its DNS for, which knows none. Dialled, they reached loopback past
# every `ip` rule (a review found it); as 4.34, they now do not resolve.
# The other forms, and the system-resolver DNS server (UseIP*), are unit-tested
# (tests/transport/internet/test_resolve.py, tests/app/dns/test_dns_resolver.py).
def test_legacy_numeric_names_do_not_resolve_as_in_4_34(v2ray_bin: str, tmp_path) -> None:
    with TagSink(SYSTEM) as sink:
        with RoutedPair(INBOUNDS, [], {"rules": []}, assets=asset_dir(tmp_path),
                        extra_outbounds=[freedom("AsIs")], v2ray_bin=v2ray_bin) as pair:
            request = Request("socks-in", "127.1", sink.port, domain_atyp=True)
            answers = pair.route(request)
            assert answers[0] == answers[1] != SYSTEM, describe(request, answers, pair)
            answers = pair.route(Request("socks-in", "127.0.0.1", sink.port, domain_atyp=True))
            assert answers == (SYSTEM, SYSTEM)  # the standard form is an IP to both
