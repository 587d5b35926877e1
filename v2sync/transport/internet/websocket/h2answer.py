"""What a WebSocket server over TLS answers a client that negotiated HTTP/2, as 4.34's does.

4.34's hub offers ``h2`` by default and serves with Go's net/http, which then speaks
HTTP/2; a WebSocket upgrade cannot happen there (no Upgrade in HTTP/2, RFC 8441 aside), so
every request is refused: 404 for another path (hub.go), gorilla's 400 for the path. A
browser or a prober that asks over HTTP/2 gets those answers, not a closed connection.

Pure and socket-free: ``receive(bytes)`` gives the bytes to send. The ``h2`` package is
imported only here, when a client negotiated ``h2``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Tuple

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from v2sync.common.errors import RemoteProtocolError
from v2sync.common.protocol.http2 import FrameGuard
from v2sync.transport.internet.websocket.handshake import (HTTP_STATUS_TEXT, normalize_path,
                                                           target_url_path)

MAX_REQUESTS = 100  # answered on one connection before it is closed (bounds the work)
# What one client may send in all. Its frames are read in the thread that runs every
# inbound's handshakes, and h2 and hpack are pure Python: 1 MiB header blocks or 28,000
# SETTINGS frames held it ~0.3 s each (others waited up to 480 ms; 4.34: 5-9 ms; found by
# a review). Refusing 100 requests takes a few hundred small frames.
MAX_FRAMES = 500
MAX_BYTES = 256 * 1024
MAX_HEADER_BLOCK = 16 * 1024
_BAD_REQUEST = HTTP_STATUS_TEXT[400].encode("ascii") + b"\n"  # gorilla's http.Error body
Headers = List[Tuple[str, str]]


class H2Refusals:
    """An HTTP/2 server connection that refuses every request as 4.34's hub does."""

    def __init__(self, path: str, date: Callable[[], str]):
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(config)
        self._h2.initiate_connection()
        self._guard = FrameGuard.for_server(block_limit=MAX_HEADER_BLOCK,
                                            max_frames=MAX_FRAMES, max_bytes=MAX_BYTES)
        self._path = normalize_path(path)
        self._date = date
        self.answered = 0

    def receive(self, data: bytes) -> bytes:
        """The bytes to send after ``data``; RemoteProtocolError when the client broke
        HTTP/2 (a GOAWAY may still be owed: ``pending``)."""
        self._refuse_past_limits(data)
        try:  # the answers too: a client may have shut its window or reset its stream
            for event in self._h2.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    self._answer(event.stream_id, event.headers)
        except h2.exceptions.ProtocolError as e:
            raise RemoteProtocolError(f"websocket over h2: {e}") from None
        return self.pending()

    def _refuse_past_limits(self, data: bytes) -> None:
        try:
            self._guard.feed(data)
        except RemoteProtocolError as e:
            self._h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            raise RemoteProtocolError(f"websocket over h2: {e}") from None

    def pending(self) -> bytes:
        return self._h2.data_to_send()

    @property
    def done(self) -> bool:
        return self.answered >= MAX_REQUESTS

    def _answer(self, stream_id: int, headers: Iterable[Tuple[Any, Any]]) -> None:
        fields = {str(name): str(value) for name, value in headers}  # str: header_encoding
        self.answered += 1
        head = fields.get(":method") == "HEAD"
        if target_url_path(fields.get(":path", "")) != self._path:
            self._h2.send_headers(stream_id, [(":status", "404"), ("content-length", "0"),
                                              ("date", self._date())], end_stream=True)
            return
        self._h2.send_headers(stream_id, _bad_request_head(self._date()), end_stream=head)
        if not head:
            self._h2.send_data(stream_id, _BAD_REQUEST, end_stream=True)


def _bad_request_head(date: str) -> Headers:
    """gorilla's returnError over Go's HTTP/2 writer: the handler's headers sorted, then
    the length and the date."""
    return [(":status", "400"), ("content-type", "text/plain; charset=utf-8"),
            ("sec-websocket-version", "13"), ("x-content-type-options", "nosniff"),
            ("content-length", str(len(_BAD_REQUEST))), ("date", date)]
