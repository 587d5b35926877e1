"""DNS hijack on a gateway: dnspython in a client namespace asks the gateway's port 53, a
dokodemo-door there routes to the ``dns`` outbound, which answers A/AAAA from the built-in
DNS and passes everything else to the real DNS server (dnsmasq in the "internet"
namespace). v2sync and the real v2ray 4.34 run the same config and get the same questions.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any, Dict, Iterator

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from support.netns import (GATEWAY_CLIENT_SIDE, INTERNET_IP, GatewayNet, entered,
                           gateway_net, in_namespace)
from support.procs import ConfigProcess, V2RayProcess, V2SyncProcess, require_v2ray

IO_TIMEOUT = 3.0
DNSMASQ_READY = 5.0


@pytest.fixture
def net() -> Iterator[GatewayNet]:
    with gateway_net() as built:
        yield built


@pytest.fixture
def dnsmasq(net: GatewayNet) -> Iterator[None]:
    """The internet's DNS server: example.test A 10.9.9.9 and a TXT record (the client
    cannot reach it: readiness is checked from the gateway)."""
    if shutil.which("dnsmasq") is None:
        if os.environ.get("CI"):
            pytest.fail("dnsmasq is not installed; CI must run the DNS-hijack test")
        pytest.skip("dnsmasq is not installed")
    proc = subprocess.Popen(
        [*net.exec_prefix(net.internet), "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts",
         "--bind-interfaces", f"--listen-address={INTERNET_IP}", "--port=53",
         "--address=/example.test/10.9.9.9", "--txt-record=txt.test,hello from dnsmasq",
         "--pid-file="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_dns(net, INTERNET_IP)
        yield None
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_for_dns(net: GatewayNet, server: str) -> None:
    deadline = time.monotonic() + DNSMASQ_READY
    while True:
        try:
            ask(net, server, "txt.test", "TXT", timeout=0.3, ns=net.gateway)
            return
        except dns.exception.Timeout:
            if time.monotonic() > deadline:
                raise


def ask(net: GatewayNet, server: str, name: str, rdtype: str, tcp: bool = False,
        timeout: float = IO_TIMEOUT, ns: str = "") -> dns.message.Message:
    """dnspython's query from the client namespace (its socket is made in there)."""
    query = dns.message.make_query(name, rdtype)
    with entered(ns or net.client):
        if tcp:
            return dns.query.tcp(query, server, timeout=timeout)
        return dns.query.udp(query, server, timeout=timeout)


def gateway_config() -> Dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        "dns": {"hosts": {"hijacked.test": "10.7.7.7", "v6.test": "fd00::7"},
                "servers": [INTERNET_IP]},
        "inbounds": [{"tag": "dns-in", "protocol": "dokodemo-door", "listen": GATEWAY_CLIENT_SIDE,
                      "port": 53, "settings": {"address": INTERNET_IP, "port": 53,
                                               "network": "tcp,udp"}}],
        "outbounds": [{"protocol": "freedom", "tag": "direct"},
                      {"protocol": "dns", "tag": "dns-out"}],
        "routing": {"rules": [{"type": "field", "inboundTag": ["dns-in"],
                               "outboundTag": "dns-out"}]},
    }


def start_gateway(implementation: str, net: GatewayNet) -> ConfigProcess:
    cls = V2RayProcess if implementation == "v2ray" else V2SyncProcess
    kwargs = {"binary": require_v2ray()} if implementation == "v2ray" else {}
    return in_namespace(cls, net.gateway)(gateway_config(), **kwargs).start()


def summary(answer: dns.message.Message):
    """What a client sees: rcode, flags that matter, and the records (text, TTL)."""
    flags = answer.flags & (dns.flags.QR | dns.flags.AA | dns.flags.RA | dns.flags.RD)
    return (dns.rcode.to_text(answer.rcode()), flags,
            sorted((str(r.name), r.ttl, sorted(x.to_text() for x in r)) for r in answer.answer))


QUESTIONS = [("hijacked.test", "A", False), ("v6.test", "AAAA", False),
             ("example.test", "A", False), ("txt.test", "TXT", False),
             ("hijacked.test", "A", True), ("txt.test", "TXT", True)]


@pytest.mark.parametrize("implementation", ["v2sync", "v2ray"])
def test_dns_hijack(net: GatewayNet, dnsmasq, implementation: str) -> None:
    proc = start_gateway(implementation, net)
    try:
        answers = {q: ask(net, GATEWAY_CLIENT_SIDE, q[0], q[1], q[2]) for q in QUESTIONS}
    finally:
        proc.stop()
    # A/AAAA from the built-in DNS: the hosts entry dnsmasq has never heard of
    assert summary(answers[("hijacked.test", "A", False)])[2] == \
        [("hijacked.test.", 600, ["10.7.7.7"])]
    assert summary(answers[("v6.test", "AAAA", False)])[2] == [("v6.test.", 600, ["fd00::7"])]
    # an A the built-in DNS asked dnsmasq for, answered as the dns outbound builds it
    assert summary(answers[("example.test", "A", False)])[2] == \
        [("example.test.", 600, ["10.9.9.9"])]
    # anything else went to dnsmasq and came back as it answered
    txt = answers[("txt.test", "TXT", False)]
    assert [x.to_text() for r in txt.answer for x in r] == ['"hello from dnsmasq"']
    assert summary(answers[("txt.test", "TXT", True)]) == summary(txt)
    assert summary(answers[("hijacked.test", "A", True)]) == \
        summary(answers[("hijacked.test", "A", False)])
