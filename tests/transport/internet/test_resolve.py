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
