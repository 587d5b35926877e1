"""``common.protocol.command.command_for``: the command VMess and VLESS outbounds send."""
from __future__ import annotations

import pytest

from v2sync.common.mux.encoding import MUX_COOL_ADDRESS
from v2sync.common.net import Address, Destination, Network
from v2sync.common.protocol.command import Command, command_for


@pytest.mark.parametrize("target, command", [
    (Destination(Address.parse("example.com"), 443, Network.TCP), Command.TCP),
    (Destination(Address.parse("1.1.1.1"), 53, Network.UDP), Command.UDP),
    (Destination(MUX_COOL_ADDRESS, 9527, Network.TCP), Command.MUX),
    (Destination(MUX_COOL_ADDRESS, 0, Network.UDP), Command.MUX),  # any port, any network
])
def test_command_for_a_target(target: Destination, command: Command) -> None:
    assert command_for(target) is command
