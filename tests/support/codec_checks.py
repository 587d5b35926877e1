"""The house contract for incremental decoders, as assertions shared by codec tests.

A decoder ``parse(buf) -> None | (frame, consumed)`` must return the frame for the whole
input, ``None`` for every proper prefix (fed one byte at a time), and leave trailing bytes
unconsumed; garbage raises ``RemoteProtocolError`` carrying the protocol's error reply.
"""
import pytest

from v2sync.common.errors import RemoteProtocolError


def assert_decodes(parse, wire: bytes, expected, trailer: bytes) -> None:
    """Whole, one byte at a time (None until the last byte) and with trailing bytes."""
    assert parse(wire) == (expected, len(wire))
    for cut in range(len(wire)):
        assert parse(wire[:cut]) is None, cut
    frame, consumed = parse(wire + trailer)
    assert frame == expected
    assert (wire + trailer)[consumed:] == trailer


def assert_garbage(parse, wire: bytes, reply) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse(wire)
    assert info.value.reply == reply
