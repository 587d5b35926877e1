"""A gRPC server over HTTP/2 cleartext, on any byte stream (the API's link, a socket).

One connection is served by one thread, call after call as each request's stream ends
(API calls are small and quick). Everything is bounded: concurrent streams (an HTTP/2
setting), each message (``encoding.MAX_MESSAGE``), what all of a connection's unfinished
requests hold (``MAX_BUFFERED``), and reads (the caller's stream times out).

Failures answer as gRPC does: an unknown service or method is UNIMPLEMENTED, a body that
does not parse INTERNAL, an oversized one RESOURCE_EXHAUSTED, an error a service raises
UNKNOWN with its text (grpc-go's code for a plain error, what 4.34's services return). A
client that speaks HTTP/1 gets an HTTP/1.1 505 answer saying what the port speaks; HTTP/2
that h2 refuses ends the connection with a GOAWAY. None of it reaches the proxy.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable, Dict, List, Mapping, Protocol, Tuple

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from v2sync.app.commander.encoding import (MAX_MESSAGE, MessageTooLarge, decode_message,
                                           encode_message, encode_status_message)
from v2sync.common.errors import RemoteProtocolError, V2SyncError
from v2sync.common.protocol.http2 import MAX_HEADER_LIST, PREFACE, FrameGuard

log = logging.getLogger(__name__)

GRPC_CONTENT_TYPE = "application/grpc"
# Calls run one after another in the connection's thread, and their unfinished bodies share
# MAX_BUFFERED, so an open stream costs only h2's state. Go's gRPC server (4.34's) sets no
# limit; with 16, a client that sent 17 calls before it saw this SETTINGS lost them all
# (h2 ends the connection: the limit applies at once, unacknowledged).
MAX_STREAMS = 256
# What a connection's unfinished request bodies may hold together.
MAX_BUFFERED = 2 * MAX_MESSAGE
HTTP1_BODY = b"this port serves gRPC over HTTP/2 cleartext (h2c), not HTTP/1\n"
HTTP1_REPLY = (b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\n"
               b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(HTTP1_BODY)
               + HTTP1_BODY)


class Status(IntEnum):
    """gRPC status codes (grpc/doc/statuscodes.md)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GrpcError(V2SyncError):
    """Ends a call with ``status`` and the message as ``grpc-message``."""

    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status


class ByteStream(Protocol):
    def read(self) -> bytes:
        """The next bytes; b"" at EOF. Raises V2SyncError on a failure or a timeout."""

    def write(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class Method:
    request_type: Any  # a generated protobuf message class
    handler: Callable[[Any], Any]


@dataclass
class _Call:
    path: str
    content_type: str
    body: bytearray = field(default_factory=bytearray)
    answered: bool = False


class GrpcServer:
    """Methods by path (``/package.Service/Method``); serves connections."""

    def __init__(self, methods: Mapping[str, Method]):
        self.methods = dict(methods)
        self.services = {path.rsplit("/", 1)[0].lstrip("/") for path in self.methods}

    def serve(self, stream: ByteStream) -> None:
        """Serve one connection until the peer leaves; raises nothing but V2SyncError."""
        first = _read_preface(stream)
        if not PREFACE.startswith(first[:len(PREFACE)]) or len(first) < len(PREFACE):
            if first[:1].isalpha():  # "GET / HTTP/1.1", "POST ...": an HTTP/1 client
                stream.write(HTTP1_REPLY)
            return
        _Connection(self, stream).run(first)

    def call(self, path: str, body: bytes) -> bytes:
        """Run one call on a complete request body; returns the response message bytes."""
        method = self.methods.get(path)
        if method is None:
            raise GrpcError(Status.UNIMPLEMENTED, self._unknown(path))
        parsed = decode_message(body)
        if parsed is None or parsed[1] != len(body):
            raise GrpcError(Status.INTERNAL, "grpc: request body is not one whole message")
        try:
            request = method.request_type.FromString(parsed[0])
        except Exception as e:  # protobuf's DecodeError, and anything its parser raises
            raise GrpcError(Status.INTERNAL,
                            f"grpc: error unmarshalling request: {e}") from None
        return method.handler(request).SerializeToString()

    def _unknown(self, path: str) -> str:
        service, _, name = path.lstrip("/").rpartition("/")
        if service in self.services:
            return f"unknown method {name} for service {service}"
        return f"unknown service {service or path}"


def _read_preface(stream: ByteStream) -> bytes:
    """Read until the 24-byte preface is in or the bytes cannot be one."""
    data = b""
    while len(data) < len(PREFACE) and PREFACE.startswith(data):
        chunk = stream.read()
        if not chunk:
            break
        data += chunk
    return data


class _Connection:
    def __init__(self, server: GrpcServer, stream: ByteStream):
        self.server = server
        self.stream = stream
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config)
        self.calls: Dict[int, _Call] = {}
        self.buffered = 0
        # Responses waiting for flow-control window: stream -> (data left, trailers).
        self.pending: Dict[int, Tuple[bytes, List[Tuple[str, str]]]] = {}

    def run(self, first: bytes) -> None:
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST})
        self.h2.initiate_connection()
        guard = FrameGuard.for_server(self.h2.max_inbound_frame_size)
        data = first
        while data:
            try:
                guard.feed(data)
            except RemoteProtocolError as e:
                log.info("api: %s", e)
                self.h2.close_connection(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
                self._flush()
                return
            try:
                going_on = self._handle(self.h2.receive_data(data))
            except h2.exceptions.ProtocolError as e:  # the peer's, or a stream it has reset
                log.info("api: HTTP/2 protocol error: %s", e)
                self._flush()  # h2 has queued the GOAWAY
                return
            if not going_on:
                self._flush()
                return
            self._flush()
            data = self.stream.read()

    def _flush(self) -> None:
        out = self.h2.data_to_send()
        if out:
            self.stream.write(out)

    def _handle(self, events: List[Any]) -> bool:
        """Act on h2's events; False once the connection is over."""
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.DataReceived):
                self._data(event)
            elif isinstance(event, h2.events.StreamEnded):
                self._respond(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self._forget(event.stream_id)
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                # A larger INITIAL_WINDOW_SIZE opens every stream's window too (RFC 7540
                # 6.9.2): answers waiting for room go on either way, as from Go's server.
                self._send_pending()
            elif isinstance(event, h2.events.ConnectionTerminated):
                return False
        return self.buffered <= MAX_BUFFERED or self._too_much()

    def _too_much(self) -> bool:
        self.h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                                 additional_data=b"request bodies over the limit")
        return False

    def _request(self, event: Any) -> None:
        headers = dict(event.headers)
        call = _Call(headers.get(":path", ""), headers.get("content-type", ""))
        self.calls[event.stream_id] = call
        if headers.get(":method") != "POST" or not call.content_type.startswith(
                GRPC_CONTENT_TYPE):
            # The gRPC spec: a request that is not gRPC gets HTTP 415 (or 405), no trailers.
            status = "405" if headers.get(":method") != "POST" else "415"
            call.answered = True
            self.h2.send_headers(event.stream_id, [(":status", status)], end_stream=True)
            self._reset_if_open(event.stream_id)

    def _data(self, event: Any) -> None:
        stream_id = event.stream_id
        call = self.calls.get(stream_id)
        if call is not None and not call.answered:
            call.body += event.data
            self.buffered += len(event.data)
            try:
                decode_message(bytes(call.body[:8]))  # the length is checked as it arrives
            except MessageTooLarge as e:
                self._finish(stream_id, Status.RESOURCE_EXHAUSTED, str(e))
            except RemoteProtocolError as e:
                self._finish(stream_id, Status.INTERNAL, str(e))
        self._acknowledge(event)

    def _acknowledge(self, event: Any) -> None:
        try:
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass  # the stream is gone; the connection's window was still credited

    def _respond(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is None or call.answered:
            self._forget(stream_id)
            return
        try:
            payload = self.server.call(call.path, bytes(call.body))
        except GrpcError as e:
            self._finish(stream_id, e.status, str(e))
        except V2SyncError as e:
            self._finish(stream_id, Status.UNKNOWN, str(e))
        except Exception:
            log.exception("api: %s failed", call.path)
            self._finish(stream_id, Status.INTERNAL, "internal error")
        else:
            self.h2.send_headers(stream_id, [(":status", "200"),
                                             ("content-type", GRPC_CONTENT_TYPE)])
            self.pending[stream_id] = (encode_message(payload), [("grpc-status", "0")])
            self._forget(stream_id)
            self._send_pending()

    def _finish(self, stream_id: int, status: Status, message: str) -> None:
        """A trailers-only answer (no message), then the stream is done with."""
        call = self.calls.get(stream_id)
        if call is not None:
            call.answered = True
            self.buffered -= len(call.body)
            call.body = bytearray()
        self.h2.send_headers(stream_id, [
            (":status", "200"), ("content-type", GRPC_CONTENT_TYPE),
            ("grpc-status", str(int(status))),
            ("grpc-message", encode_status_message(message))], end_stream=True)
        self._reset_if_open(stream_id)

    def _reset_if_open(self, stream_id: int) -> None:
        """Answered before the request ended: tell the client to stop sending (as grpc-go
        does, RST_STREAM NO_ERROR)."""
        try:
            if not self.h2.streams[stream_id].closed:
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        except (KeyError, h2.exceptions.StreamClosedError):
            pass

    def _forget(self, stream_id: int) -> None:
        call = self.calls.pop(stream_id, None)
        if call is not None:
            self.buffered -= len(call.body)
        if self._stream_gone(stream_id):
            self.pending.pop(stream_id, None)

    def _stream_gone(self, stream_id: int) -> bool:
        stream = self.h2.streams.get(stream_id)
        return stream is None or stream.closed

    def _send_pending(self) -> None:
        """Send what each answer's flow-control window allows; trailers once all is out."""
        for stream_id in list(self.pending):
            data, trailers = self.pending[stream_id]
            if self._stream_gone(stream_id):
                del self.pending[stream_id]
                continue
            window = self.h2.local_flow_control_window(stream_id)
            frame = self.h2.max_outbound_frame_size
            while data and window > 0:
                size = min(len(data), window, frame)
                self.h2.send_data(stream_id, data[:size])
                data, window = data[size:], window - size
            if data:
                self.pending[stream_id] = (data, trailers)
            else:
                del self.pending[stream_id]
                self.h2.send_headers(stream_id, trailers, end_stream=True)
