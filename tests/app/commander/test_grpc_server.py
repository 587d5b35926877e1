"""The gRPC server on an in-memory byte stream (no socket): a real call made with h2 as the
client, and a Hypothesis property that no input gets anything but a V2SyncError out."""
from __future__ import annotations

from typing import List

import h2.config
import h2.connection
import h2.events
import h2.settings
from hypothesis import given, settings, strategies as st

from v2sync.app.commander.encoding import decode_message, encode_message
from v2sync.app.commander.grpc import PREFACE, GrpcServer
from v2sync.app.commander.pb.app.stats.command import command_pb2 as pb
from v2sync.app.commander.services import StatsService, service_methods
from v2sync.app.stats.manager import StatsManager
from v2sync.common.errors import V2SyncError


class MemoryStream:
    def __init__(self, chunks: List[bytes]):
        self.chunks = list(chunks)
        self.written = bytearray()

    def read(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def write(self, data: bytes) -> None:
        self.written += data


def make_server(stats: StatsManager) -> GrpcServer:
    service = StatsService(stats)
    service.close()  # no gc callback left behind by the test
    return GrpcServer(service_methods({"StatsService": service}))


def client_request(path: str, body: bytes) -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                 header_encoding="utf-8"))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", path),
                            (":authority", "x"), ("content-type", "application/grpc")])
    client.send_data(1, body, end_stream=True)
    return client


def test_a_call_round_trip_without_a_socket() -> None:
    stats = StatsManager()
    stats.register("inbound>>>a>>>traffic>>>uplink").add(42)
    client = client_request("/xray.app.stats.command.StatsService/GetStats", encode_message(
        pb.GetStatsRequest(name="inbound>>>a>>>traffic>>>uplink").SerializeToString()))
    stream = MemoryStream([client.data_to_send()])
    make_server(stats).serve(stream)
    headers, body = {}, b""
    for event in client.receive_data(bytes(stream.written)):
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            headers.update(dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            body += event.data
    assert headers["grpc-status"] == "0"
    parsed = decode_message(body)
    assert parsed is not None
    assert pb.GetStatsResponse.FromString(parsed[0]).stat.value == 42


def test_calls_pipelined_before_the_servers_settings_are_all_answered() -> None:
    """40 calls in a client's first write, before it can see the server's SETTINGS: Go's
    gRPC server (4.34's) sets no stream limit and answers each. v2sync's limit of 16 made
    h2 end the connection at the 17th, answering none (found by a review)."""
    calls = 40
    stats = StatsManager()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                 header_encoding="utf-8"))
    client.initiate_connection()
    body = encode_message(pb.QueryStatsRequest(pattern="").SerializeToString())
    for index in range(calls):
        stream_id = 2 * index + 1
        client.send_headers(stream_id, [(":method", "POST"), (":scheme", "http"),
                                        (":path", "/v2ray.core.app.stats.command.StatsService/"
                                                  "QueryStats"),
                                        (":authority", "x"), ("content-type", "application/grpc")])
        client.send_data(stream_id, body, end_stream=True)
    stream = MemoryStream([client.data_to_send()])
    make_server(stats).serve(stream)
    answered = [event for event in client.receive_data(bytes(stream.written))
                if isinstance(event, h2.events.TrailersReceived)
                and ("grpc-status", "0") in event.headers]
    assert len(answered) == calls


def test_an_answer_held_by_a_shut_window_goes_on_when_settings_open_it() -> None:
    """A client that starts with INITIAL_WINDOW_SIZE 0 and later raises it by SETTINGS
    opens every stream's window (RFC 7540 6.9.2): the answer's data and trailers follow, as
    from Go's server. v2sync waited for a WINDOW_UPDATE that never came (found by a review)."""
    stats = StatsManager()
    stats.register("inbound>>>a>>>traffic>>>uplink").add(7)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                 header_encoding="utf-8"))
    client.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "x"),
                            (":path", "/v2ray.core.app.stats.command.StatsService/GetStats"),
                            ("content-type", "application/grpc")])
    client.send_data(1, encode_message(pb.GetStatsRequest(
        name="inbound>>>a>>>traffic>>>uplink").SerializeToString()), end_stream=True)
    first = client.data_to_send()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    stream = MemoryStream([first, client.data_to_send()])
    make_server(stats).serve(stream)
    events = client.receive_data(bytes(stream.written))
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    trailers = [dict(e.headers) for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert trailers and trailers[0]["grpc-status"] == "0"
    parsed = decode_message(body)
    assert parsed is not None and pb.GetStatsResponse.FromString(parsed[0]).stat.value == 7


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_any_bytes_end_in_an_answer_or_a_v2sync_error(data: bytes, with_preface: bool) -> None:
    stream = MemoryStream([(PREFACE if with_preface else b"") + data])
    try:
        make_server(StatsManager()).serve(stream)
    except V2SyncError:
        pass
