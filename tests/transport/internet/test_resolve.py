"""Names dialled as Go's ``Dial`` reads them once joined with their port."""
from __future__ import annotations

import pytest

from v2sync.common.errors import TransportError
from v2sync.common.net import Address
from v2sync.transport.internet.resolve import go_dial_host, resolve


@pytest.mark.parametrize("name, host", [
    ("localhost", "localhost"), ("127.0.0.1", "127.0.0.1"), ("[::1]", "::1"),
])
def test_a_name_is_dialled_as_go_splits_it(name: str, host: str) -> None:
    assert go_dial_host(name, 80) == host


def test_a_bare_colon_name_is_refused_in_gos_words() -> None:
    # "::1" joined with ":80" is "::1:80", which SplitHostPort refuses (a SOCKS4a host)
    with pytest.raises(TransportError, match="too many colons"):
        resolve("::1", "AsIs", 80)


def test_a_bracketed_name_resolves_to_its_ip() -> None:
    assert resolve("[::1]", "AsIs", 80) == [Address.parse("::1")]
    assert resolve("127.0.0.1", "UseIPv4", 80) == [Address.parse("127.0.0.1")]


@pytest.mark.parametrize("name", ["127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "127.0.1"])
def test_inet_aton_legacy_forms_do_not_resolve_as_with_go(name: str) -> None:
    """glibc's getaddrinfo reads these as 127.0.0.1; Go's resolver asks DNS, which knows
    none (compared with 4.34 in test_freedom_resolution_differential.py)."""
    with pytest.raises(TransportError, match="no such host"):
        resolve(name)


def test_the_standard_forms_and_names_still_resolve() -> None:
    assert resolve("127.0.0.1") == [Address.parse("127.0.0.1")]
    assert Address.parse("127.0.0.1") in resolve("localhost", "UseIPv4")
