"""Sniffers: HTTP Host, TLS SNI (a real ClientHello from Python's ssl, plus hand-built ones for
the corner cases), BitTorrent; fed whole, one byte at a time and with trailing bytes, and
Hypothesis properties. No sockets."""
from __future__ import annotations

import ssl
from typing import Callable, Optional

import pytest
from hypothesis import given, strategies as st

from v2sync.app.dispatcher.sniffer import (NEED_MORE, SniffResult, override_domain, should_override,
                                           sniff, sniff_bittorrent, sniff_http, sniff_tls)
from v2sync.common.errors import ProtocolError

Sniffer = Callable[[bytes], object]
TRAILER = b"\x17\x03\x03\x00\x05hello and more application bytes"
HTTP_REQUEST = (b"GET /index.html HTTP/1.1\r\nUser-Agent: curl/7\r\n"
                b"Host: WWW.Example.COM:8080\r\nAccept: */*\r\n\r\n")


def python_client_hello(server_name: Optional[str]) -> bytes:
    """The first flight of Python's own TLS client, through memory BIOs: a real ClientHello."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_name is None:
        context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _u16(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big")


def client_hello(server_name: Optional[bytes], *, handshake_type: int = 1,
                 session_id: bytes = b"", suites: bytes = b"\x13\x01",
                 before: bytes = b"", name_type: int = 0, record_version: bytes = b"\x03\x01",
                 extensions_length_delta: int = 0) -> bytes:
    """A minimal TLS record holding one ClientHello, laid out as RFC 8446 §4.1.2 says."""
    extensions = before
    if server_name is not None:
        entry = bytes([name_type]) + _u16(server_name) + server_name
        extensions += b"\x00\x00" + _u16(_u16(entry) + entry) + _u16(entry) + entry
    length = (len(extensions) + extensions_length_delta).to_bytes(2, "big")
    body = (b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id + _u16(suites)
            + suites + b"\x01\x00" + length + extensions)
    handshake = bytes([handshake_type]) + len(body).to_bytes(3, "big") + body
    return b"\x16" + record_version + _u16(handshake) + handshake


def assert_sniffs(sniffer: Sniffer, data: bytes, expected: SniffResult, complete_at: int) -> None:
    """Whole, one byte at a time (NEED_MORE until ``complete_at`` bytes) and with trailing
    bytes (same verdict: the sniffer never looks past what it needs)."""
    assert sniffer(data) == expected
    for cut in range(complete_at):
        assert sniffer(data[:cut]) is NEED_MORE, cut
    for cut in range(complete_at, len(data) + 1):
        assert sniffer(data[:cut]) == expected, cut
    assert sniffer(data + TRAILER) == expected


# ---------------------------------------------------------------- HTTP


def test_http_host_lower_cased_port_stripped() -> None:
    host_line_end = HTTP_REQUEST.index(b"\r\nAccept") + 2
    assert_sniffs(sniff_http, HTTP_REQUEST, SniffResult("http1", "www.example.com"),
                  complete_at=host_line_end)


@pytest.mark.parametrize("method", [b"get", b"POST", b"Head", b"pUt", b"DELETE", b"options",
                                    b"CONNECT"])
def test_http_methods_are_case_insensitive(method: bytes) -> None:
    request = method + b" / HTTP/1.1\r\nhost: a.test\r\n\r\n"
    assert sniff_http(request) == SniffResult("http1", "a.test")


@pytest.mark.parametrize("host, expected", [
    (b"10.0.0.1:80", "10.0.0.1"),
    (b"[2001:DB8::1]:443", "2001:db8::1"),
    (b"[::1]", "::1"),
    (b"a.test:", "a.test"),
    (b"  spaced.test  ", "spaced.test"),
])
def test_http_host_forms(host: bytes, expected: str) -> None:
    request = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n"
    assert sniff_http(request) == SniffResult("http1", expected)


@pytest.mark.parametrize("data, expected", [
    (b"GET / HTTP/1.1\r\nHost: first.test\r\nHost: last.test\r\n\r\n", "last.test"),
    (b"GET / HTTP/1.1\r\nHost: first.test\r\nHost:\r\n\r\n", "first.test"),
    (b"GET / HTTP/1.1\r\nHost: first.test\r\nHost: last.test\r\n", "last.test"),
])
def test_http_the_last_host_line_wins_as_in_4_34(data: bytes, expected: str) -> None:
    assert sniff_http(data) == SniffResult("http1", expected)
    assert sniff_http(b"GET / HTTP/1.1\r\nHost: a:b:c\r\nHost: ok.test\r\n\r\n") is None


@pytest.mark.parametrize("data", [
    b"PATCH / HTTP/1.1\r\nHost: a.test\r\n\r\n",  # not one of 4.34's seven methods
    b"\x16\x03\x01\x00\x05hello",
    b"X",
    b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\nHost: in.the.body\r\n",  # headers ended, no Host
    b"GET / HTTP/1.1\nHost: a:b:c\n",  # bare IPv6 / too many colons
    b"GET / HTTP/1.1\nHost: [::1\n",
    b"GET / HTTP/1.1\nHost: a.test:99999\n",
    b"GET / HTTP/1.1\nHost: a.test:0080\n",  # a leading 0 is octal to ParseUint
])
def test_http_refuses(data: bytes) -> None:
    assert sniff_http(data) is None


@pytest.mark.parametrize("data", [b"", b"g", b"DEL", b"CONNEC", b"GET / HTTP/1.1\r\nHost: half",
                                  b"GET / HTTP/1.1\r\nHost:\r\n"])
def test_http_needs_more(data: bytes) -> None:
    assert sniff_http(data) is NEED_MORE


# ---------------------------------------------------------------- TLS


def test_real_client_hello_from_python_ssl() -> None:
    hello = python_client_hello("www.example.com")
    assert_sniffs(sniff_tls, hello, SniffResult("tls", "www.example.com"), complete_at=len(hello))


def test_real_client_hello_without_sni_is_not_sniffed() -> None:
    assert sniff_tls(python_client_hello(None)) is None


def test_hand_built_hello_with_other_extensions_first() -> None:
    hello = client_hello(b"api.example.net", session_id=bytes(32),
                         before=b"\x00\x0a\x00\x04\x00\x02\x00\x1d")  # supported_groups
    assert_sniffs(sniff_tls, hello, SniffResult("tls", "api.example.net"), complete_at=len(hello))


def test_empty_server_name_is_tls_without_a_domain() -> None:
    assert sniff_tls(client_hello(b"")) == SniffResult("tls", "")


@pytest.mark.parametrize("hello", [
    client_hello(b"example.com."),  # RFC 6066: no trailing dot
    client_hello(b"a.test", handshake_type=2),  # a ServerHello
    client_hello(b"a.test", suites=b"\x13\x01\x13"),  # odd cipher-suite length
    client_hello(b"a.test", session_id=bytes(33)),
    client_hello(b"a.test", extensions_length_delta=1),
    client_hello(b"a.test", name_type=1),  # no host_name entry
    client_hello(None),
    client_hello(b"a.test", record_version=b"\x02\x00"),
    b"\x17\x03\x03\x00\x01x",
    b"\x16\x02",
    b"\x16\x03\x01\x00\x00",  # an empty record
])
def test_tls_refuses(hello: bytes) -> None:
    assert sniff_tls(hello) is None


def test_tls_needs_the_whole_record() -> None:
    hello = client_hello(b"a.test")
    assert sniff_tls(b"") is NEED_MORE
    assert sniff_tls(b"\x16\x03") is NEED_MORE
    assert sniff_tls(hello[:-1]) is NEED_MORE


# ---------------------------------------------------------------- BitTorrent and sniff()

BT_HANDSHAKE = b"\x13BitTorrent protocol" + bytes(8) + b"I" * 20 + b"P" * 20


def test_bittorrent() -> None:
    assert_sniffs(sniff_bittorrent, BT_HANDSHAKE, SniffResult("bittorrent", ""), complete_at=20)
    assert sniff_bittorrent(b"\x13BitTorrent protocoX") is None


def test_sniff_tries_http_tls_bittorrent_in_order() -> None:
    assert sniff(HTTP_REQUEST) == SniffResult("http1", "www.example.com")
    assert sniff(python_client_hello("sni.test")) == SniffResult("tls", "sni.test")
    assert sniff(BT_HANDSHAKE) == SniffResult("bittorrent", "")
    assert sniff(b"SSH-2.0-OpenSSH_9.0\r\n") is None
    assert sniff(b"") is NEED_MORE
    assert sniff(b"\x16") is NEED_MORE  # TLS still possible
    assert sniff(b"\x13Bit") is NEED_MORE  # BitTorrent still possible
    assert sniff(b"GET / HTTP/1.1\r\n") is NEED_MORE


def test_should_override_is_a_prefix_match() -> None:
    assert should_override("http1", ["http"])
    assert should_override("tls", ["http", "tls"])
    assert not should_override("tls", ["http"])
    assert not should_override("bittorrent", ["http", "tls"])
    assert not should_override("http1", [])


def test_override_domain_needs_a_domain() -> None:
    assert override_domain(SniffResult("tls", "a.test"), ["tls"]) == "a.test"
    assert override_domain(SniffResult("tls", ""), ["tls"]) is None
    assert override_domain(SniffResult("http1", "a.test"), ["tls"]) is None


# ---------------------------------------------------------------- properties

SNIFFERS = (sniff_http, sniff_tls, sniff_bittorrent, sniff)


def _verdict(sniffer: Sniffer, data: bytes) -> object:
    try:
        outcome = sniffer(data)
    except ProtocolError as e:  # allowed by the contract (none of ours raises)
        return type(e)
    assert outcome is None or outcome is NEED_MORE or isinstance(outcome, SniffResult)
    return outcome


@given(st.sampled_from(SNIFFERS), st.binary(max_size=300), st.binary(max_size=50))
def test_any_bytes_give_a_verdict_that_more_bytes_never_change(sniffer: Sniffer, data: bytes,
                                                              more: bytes) -> None:
    first = _verdict(sniffer, data)
    if first is not NEED_MORE:  # a final verdict: re-sniffing a grown buffer agrees
        assert _verdict(sniffer, data + more) == first


@given(st.sampled_from([b"GET", b"post", b"CONNECT"]), st.binary(max_size=200))
def test_anything_after_a_method(method: bytes, rest: bytes) -> None:
    _verdict(sniff_http, method + b" " + rest)


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_hosts = st.lists(_label, min_size=1, max_size=4).map(".".join)


@given(_hosts, st.integers(0, 600))
def test_any_sni_survives_any_cut(host: str, cut: int) -> None:
    hello = client_hello(host.encode(), before=b"\x00\x17\x00\x00")  # extended_master_secret
    expected = SniffResult("tls", host)
    assert sniff(hello[:cut]) == (expected if cut >= len(hello) else NEED_MORE)


@given(_hosts, st.binary(max_size=300))
def test_any_garbage_inside_a_hello_record(host: str, garbage: bytes) -> None:
    record = client_hello(host.encode())
    mangled = record[:9] + garbage[:len(record) - 9] + record[9 + len(garbage):]
    _verdict(sniff_tls, mangled)


@pytest.mark.parametrize("data, expected", [
    (b"GET / HTTP/1.1\nHost: caf\xc3\xa9.test\n", "caf\u00e9.test"),
    (b"GET / HTTP/1.1\nHost: CAF\xc3\x89.test\n", "caf\u00e9.test"),
    (b"GET / HTTP/1.1\nHost: \xe2\x84\xaa.test\n", "k.test"),  # the Kelvin sign
    (b"GET / HTTP/1.1\nHost: \xc4\xb0.test\n", "i.test"),  # Go's simple mapping, one rune
    (b"GET / HTTP/1.1\nHost: a\xff.test\n", "a\ufffd.test"),  # ToLower: a bad byte is U+FFFD
    (b"GET / HTTP/1.1\nHost: a.test:0x50\n", "a.test"),
    (b"GET / HTTP/1.1\nHost: a.test:0b1\n", "a.test"),
    (b"GET / HTTP/1.1\nHost: a.test:1_0\n", "a.test"),
])
def test_http_hosts_as_go_lowers_and_parses_them(data: bytes, expected: str) -> None:
    assert sniff_http(data) == SniffResult("http1", expected)
