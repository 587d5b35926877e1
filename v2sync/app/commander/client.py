"""A small gRPC-over-h2c client (what ``v2sync api`` and ``v2sync top`` call the API with).

One connection, one call at a time, every wait bounded by ``timeout`` (v2ctl's 3 s by
default). It speaks to v2sync and to v2ray 4.34 alike: both serve plain HTTP/2 gRPC.
"""
from __future__ import annotations

import socket
import time
from typing import Any, Dict, Optional

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from v2sync.app.commander.encoding import decode_message, decode_status_message, encode_message
from v2sync.app.commander.grpc import GRPC_CONTENT_TYPE, GrpcError, Status
from v2sync.common.errors import TransportError
from v2sync.common.net import Address, Destination
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.dialer import dial_once

DEFAULT_TIMEOUT = 3.0
READ_SIZE = 64 * 1024


class _Reply:
    def __init__(self) -> None:
        self.headers: Dict[str, str] = {}
        self.body = bytearray()
        self.ended = False
        self.reset: Optional[int] = None


class GrpcClient:
    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT):
        self.authority = f"{host}:{port}"
        self.timeout = timeout
        # The dial counts against ``timeout`` too, as v2ctl's 3 s covers its dial and call
        # (a server whose SYNs were dropped held ``v2sync api`` for 16 s; found by a review).
        self.conn: Connection = dial_once(Destination(Address.parse(host), port),
                                          timeout=timeout)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self._flush()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, path: str, request: Any, response_type: Any) -> Any:
        """Send ``request`` (a protobuf message) to ``/package.Service/Method``; returns a
        ``response_type``. Raises GrpcError for a gRPC status, TransportError otherwise."""
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", self.authority), ("content-type", GRPC_CONTENT_TYPE),
            ("te", "trailers")])
        self.h2.send_data(stream_id, encode_message(request.SerializeToString()),
                          end_stream=True)
        self._flush()
        reply = self._wait(stream_id, time.monotonic() + self.timeout)
        status = reply.headers.get("grpc-status")
        if status is None:
            raise TransportError(f"{path}: no grpc-status (HTTP {reply.headers.get(':status')})")
        if status != "0":
            raise GrpcError(_status(status),
                            decode_status_message(reply.headers.get("grpc-message", "")))
        parsed = decode_message(bytes(reply.body))
        if parsed is None:
            raise TransportError(f"{path}: the answer holds no whole message")
        return response_type.FromString(parsed[0])

    def _wait(self, stream_id: int, deadline: float) -> _Reply:
        reply = _Reply()
        while not reply.ended:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"no answer from {self.authority} within {self.timeout:g} s")
            self.conn.settimeout(left)
            try:
                data = self.conn.recv(READ_SIZE)
            except (socket.timeout, OSError) as e:
                raise TransportError(f"reading from {self.authority}: {e}") from e
            if not data:
                raise TransportError(f"{self.authority} closed the connection")
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as e:  # a server that breaks HTTP/2
                raise TransportError(f"{self.authority}: HTTP/2 protocol error: {e}") from e
            for event in events:
                self._apply(event, stream_id, reply)
            self._flush()
        if reply.reset is not None and "grpc-status" not in reply.headers:
            raise TransportError(f"stream reset by {self.authority} (code {reply.reset})")
        return reply

    def _apply(self, event: Any, stream_id: int, reply: _Reply) -> None:
        if getattr(event, "stream_id", None) != stream_id:
            return
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            reply.headers.update((str(k), str(v)) for k, v in event.headers)
        elif isinstance(event, h2.events.DataReceived):
            reply.body += event.data
            self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            reply.ended = True
        elif isinstance(event, h2.events.StreamReset):
            reply.reset = event.error_code
            reply.ended = True

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.conn.write(data)


def _status(text: str) -> Status:
    try:
        return Status(int(text))
    except ValueError:
        return Status.UNKNOWN
