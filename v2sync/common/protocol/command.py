"""The request command VMess and VLESS carry (v2ray ``common/protocol/headers.go``
``RequestCommand``): one byte, the same values in both protocols."""
from __future__ import annotations

import enum

from v2sync.common.mux.encoding import is_mux_destination
from v2sync.common.net import Destination, Network


class Command(enum.IntEnum):
    TCP = 1
    UDP = 2
    MUX = 3  # Mux.cool: the destination is v1.mux.cool, carried by no address field


def command_for(target: Destination) -> Command:
    """The command that carries ``target`` (VMess and VLESS ``outbound.go`` alike): a mux
    worker's ``v1.mux.cool`` is MUX, else the target's network says TCP or UDP."""
    if is_mux_destination(target):
        return Command.MUX
    return Command.UDP if target.network is Network.UDP else Command.TCP
