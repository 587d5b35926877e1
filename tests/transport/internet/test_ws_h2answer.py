"""H2Refusals, socket-free, against the h2 package's own client end: fed whole, one byte
at a time, and with a second request behind the first."""
from __future__ import annotations

from typing import Dict, List, Tuple

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from v2sync.common.errors import RemoteProtocolError
from v2sync.transport.internet.websocket.h2answer import MAX_REQUESTS, H2Refusals


def _client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                  header_encoding="utf-8"))
    client.initiate_connection()
    return client


def _request(client: h2.connection.H2Connection, path: str, method: str = "GET") -> None:
    stream = client.get_next_available_stream_id()
    client.send_headers(stream, [(":method", method), (":scheme", "https"),
                                 (":authority", "x"), (":path", path)], end_stream=True)


def _responses(client: h2.connection.H2Connection, data: bytes
               ) -> Tuple[Dict[int, List[Tuple[str, str]]], Dict[int, bytes]]:
    heads: Dict[int, List[Tuple[str, str]]] = {}
    bodies: Dict[int, bytes] = {}
    for event in client.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived):
            heads[event.stream_id] = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
    return heads, bodies


@pytest.mark.parametrize("chunk", [0, 1], ids=["whole", "byte-by-byte"])
def test_each_request_is_refused_as_4_34_refuses_it(chunk: int) -> None:
    server, client = H2Refusals("ws", lambda: "D"), _client()
    _request(client, "/ws?ed=2048")
    _request(client, "/nope")  # the trailing bytes: a second request behind the first
    _request(client, "/ws", "HEAD")
    wire = client.data_to_send()
    out = server.pending()
    pieces = [wire[i:i + 1] for i in range(len(wire))] if chunk else [wire]
    for piece in pieces:
        out += server.receive(piece)
    heads, bodies = _responses(client, out)
    assert heads[1] == [(":status", "400"), ("content-type", "text/plain; charset=utf-8"),
                        ("sec-websocket-version", "13"), ("x-content-type-options", "nosniff"),
                        ("content-length", "12"), ("date", "D")]
    assert bodies[1] == b"Bad Request\n"
    assert heads[3] == [(":status", "404"), ("content-length", "0"), ("date", "D")]
    assert heads[5][0] == (":status", "400") and 5 not in bodies
    assert server.answered == 3 and not server.done


def test_a_client_that_breaks_http2_is_refused_and_asking_is_bounded() -> None:
    server = H2Refusals("/ws", lambda: "D")
    with pytest.raises(RemoteProtocolError):
        server.receive(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")  # no HTTP/2 preface
    busy, client = H2Refusals("/ws", lambda: "D"), _client()
    for _ in range(MAX_REQUESTS):
        _request(client, "/ws")
        busy.receive(client.data_to_send())
        client.receive_data(busy.pending())
    assert busy.done


def test_a_client_whose_window_is_shut_is_refused_not_crashed_on() -> None:
    """With an initial window of 0 the 400's body cannot go: a protocol refusal, as for
    any other broken client, not h2's own exception escaping the handshake."""
    server, client = H2Refusals("/ws", lambda: "D"), _client()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    _request(client, "/ws")
    with pytest.raises(RemoteProtocolError):
        server.receive(client.data_to_send())


def _frame(length: int, kind: int, flags: int = 0, stream: int = 0) -> bytes:
    return length.to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")


def _goaway_code(data: bytes) -> int:
    """The error code of the GOAWAY frame at the end of the server's bytes."""
    assert data[-14] == 0x7, "not a GOAWAY"  # its type, in a 9-byte header + 8 bytes
    return int.from_bytes(data[-4:], "big")


@pytest.mark.parametrize("chunk", [0, 1], ids=["whole", "byte-by-byte"])
def test_a_client_past_the_limits_is_refused_before_h2_decodes_it(chunk: int) -> None:
    """Its frames are read in the thread that runs every inbound's handshakes: a frame
    declared over h2's limit, a header block over MAX_HEADER_BLOCK or a flood of frames is
    refused as the frame headers arrive, with a GOAWAY (a review measured 1 MiB blocks and
    SETTINGS floods holding that thread ~0.3 s each)."""
    from v2sync.common.protocol.http2 import PREFACE
    from v2sync.transport.internet.websocket.h2answer import MAX_FRAMES, MAX_HEADER_BLOCK
    hostile = {
        "16 MiB frame": _frame(16_777_215, 0x1, 0, 1),
        "long block": _frame(MAX_HEADER_BLOCK, 0x1, 0, 1) + b"h" * MAX_HEADER_BLOCK
        + _frame(1, 0x9, 0x4, 1),
        "settings flood": _frame(0, 0x4) * (MAX_FRAMES + 1),
    }
    for name, tail in hostile.items():
        server = H2Refusals("/ws", lambda: "D")
        server.pending()
        wire = PREFACE + _frame(0, 0x4) + tail
        with pytest.raises(RemoteProtocolError, match="HTTP/2"):
            for i in range(0, len(wire), chunk or len(wire)):
                server.receive(wire[i:i + (chunk or len(wire))])
        assert _goaway_code(server.pending()) == 0xB, name  # ENHANCE_YOUR_CALM
