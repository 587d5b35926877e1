"""The dns outbound's messages on a link (``_MessageIO``): length-prefixed over TCP, one per
chunk over UDP; an empty message is no frame over TCP, as 4.34's TCPWriter writes none
(a zero-length answer from a TCP upstream reached the client as ``\\x00\\x00``; found by a
review). Socket-free: the link is two in-memory pipes."""
from __future__ import annotations

from v2sync.common.net import Network
from v2sync.proxy.dns.outbound import _MessageIO
from v2sync.transport.link import new_link_pair
from v2sync.transport.pipe import EOF

LIMIT = 64 * 1024


def written(network: Network, messages) -> list:
    inbound_side, outbound_side = new_link_pair(LIMIT, "test")
    io = _MessageIO(outbound_side, network)
    for message in messages:
        io.write(message)
    outbound_side.writer.close()
    chunks = []
    for _ in range(len(messages) + 1):
        chunk = inbound_side.reader.read()
        if chunk is EOF:
            break
        chunks.append(chunk)
    return chunks


def test_an_empty_message_is_no_tcp_frame() -> None:
    assert b"".join(written(Network.TCP, [b"ab", b"", b"c"])) == b"\x00\x02ab\x00\x01c"


def test_udp_messages_go_one_per_chunk() -> None:
    assert written(Network.UDP, [b"ab", b"c"]) == [b"ab", b"c"]
