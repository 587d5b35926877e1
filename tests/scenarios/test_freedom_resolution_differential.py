"""Which address freedom dials for a name, by v2ray 4.34 and v2sync alike.

The built-in DNS (a test server) answers ``localhost`` with 127.0.0.11, where nothing
listens; the system resolver answers 127.0.0.1, where a sink does. So the sink's tag says
the system resolver was used and "(closed)" says the built-in DNS was. As in 4.34's
freedom.go: AsIs dials the name (the system resolver), even when the router looked it up
with the built-in DNS; UseIPv4 asks the built-in DNS and, when it has no usable answer,
dials the name as AsIs does.
"""
from __future__ import annotations

from typing import Any, Dict

import pytest

from app.dns.dns_test_server import DnsTestServer
from routing_helpers import dns_server
from scenarios.differential import RoutedPair, Request, TagSink, asset_dir, describe

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
