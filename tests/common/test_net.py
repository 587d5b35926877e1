"""``common/net.py``'s text helpers: Go's ``net.SplitHostPort`` and ASCII-only port digits."""
from __future__ import annotations

from typing import Optional, Tuple

import pytest

from v2sync.common.errors import ConfigError
from v2sync.common.net import (AddressKind, go_address, decimal, parse_host_port,
                               split_host_port)


# Go's own table (net/ipsock_test.go, TestSplitHostPort and its error cases).
@pytest.mark.parametrize("text, expected", [
    ("localhost:http", ("localhost", "http")),
    ("localhost:80", ("localhost", "80")),
    ("golang.org:", ("golang.org", "")),
    ("[::1]:80", ("::1", "80")),
    ("[fe80::1%lo0]:80", ("fe80::1%lo0", "80")),
    ("[localhost%lo0]:0", ("localhost%lo0", "0")),
    (":80", ("", "80")),
    (":", ("", "")),
    ("[]:80", ("", "80")),
    ("golang.org", None),  # missing port
    ("127.0.0.1", None),
    ("[::1]", None),
    ("[fe80::1%lo0]", None),
    ("[localhost%lo0]", None),
    ("localhost%lo0", None),
    ("::1", None),  # too many colons
    ("fe80::1%lo0", None),
    ("fe80::1%lo0:80", None),
    ("localhost%lo0:80", ("localhost%lo0", "80")),
    ("[foo:bar]", None),
    ("[foo:bar]baz", None),
    ("[foo]bar:baz", None),
    ("[foo]:[bar]:baz", None),
    ("[foo]:[bar]baz", None),
    ("foo[bar]:baz", None),  # unexpected '['
    ("foo]bar:baz", None),  # unexpected ']'
    ("[[::1]:80", None),
    ("example.com:8]", None),
    ("a:[80", None),
])
def test_split_host_port_as_go(text: str, expected: Optional[Tuple[str, str]]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("65535", 65535), ("007", 7), ("", None), ("+1", None), ("-1", None),
    (" 1", None), ("\u00b2", None), ("\u0668\u0660", None), ("\uff18\uff10", None),
])
def test_decimal_takes_ascii_digits_only(text: str, expected: Optional[int]) -> None:
    assert decimal(text) == expected


@pytest.mark.parametrize("text", ["h:\u00b2", "h:\u0668\u0660", "h:65536", "h", "::1:80",
                                  "[::1]x:80"])
def test_parse_host_port_refuses_with_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_host_port(text, "metrics.listen")


def test_parse_host_port_unbrackets_ipv6() -> None:
    assert parse_host_port("[::1]:9100") == ("::1", 9100)
    assert parse_host_port("0.0.0.0:0") == ("0.0.0.0", 0)


@pytest.mark.parametrize("text, value, kind", [
    (" 10.0.0.1", "10.0.0.1", AddressKind.IPV4),
    ("10.0.0.1\t", "10.0.0.1", AddressKind.IPV4),
    ("[::1]", "::1", AddressKind.IPV6),
    ("[ ::1 ]", "::1", AddressKind.IPV6),
    (" [::1]", "[::1]", AddressKind.DOMAIN),  # Go drops brackets before it trims
    ("[[::1]]", "[::1]", AddressKind.DOMAIN),
    ("a b", "a b", AddressKind.DOMAIN),       # letters at both ends: nothing trimmed
    (" example.com ", "example.com", AddressKind.DOMAIN),
    ("", "", AddressKind.DOMAIN),
])
def test_go_address_reads_as_gos_parse_address(text: str, value: str,
                                                   kind: AddressKind) -> None:
    address = go_address(text)
    assert (address.value, address.kind) == (value, kind)


def test_go_address_trims_what_go_trims() -> None:
    assert go_address(" 10.0.0.1\u3000").is_ip
    assert go_address("10.0.0.1\x85").is_ip
    assert not go_address("10.0.0.1\x1f").is_ip  # str.strip() takes it; Go's TrimSpace keeps it
