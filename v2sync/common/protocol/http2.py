"""Checks on incoming HTTP/2 frames that the ``h2`` package makes too late to be cheap.

Pure and socket-free, and it imports no ``h2``: it reads frame headers only (RFC 7540 4.1:
a 24-bit length, a type, flags, a stream id). Every HTTP/2 surface feeds it each read
before h2 sees the bytes: the gRPC API, the HTTP proxy's HTTP/2 server and client, and
what a WebSocket server answers a client that negotiated h2.

Why: h2 buffers a whole frame before it checks the length against SETTINGS_MAX_FRAME_SIZE,
so a peer declaring a 16 MiB frame made it hold 16 MiB first (~17 MiB a connection until
connIdle; 4.34 closes at the header); and hpack, pure Python, decodes a whole header block
before h2 checks MAX_HEADER_LIST_SIZE: a 1 MiB block cost 250-390 ms of CPU (4.34:
~110 ms), stalling the process's other connections (found by reviews).
"""
from __future__ import annotations

from v2sync.common.errors import RemoteProtocolError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_SIZE = 9
DEFAULT_MAX_FRAME = 16_384  # SETTINGS_MAX_FRAME_SIZE's initial value, which h2 keeps
# The header list a server accepts (gRPC's default MAX_HEADER_LIST_SIZE is 16 KiB) and a
# block four times as big: a block that big cannot decode to a list within the limit
# unless it is mostly padding.
MAX_HEADER_LIST = 16 * 1024
MAX_HEADER_BLOCK = 4 * MAX_HEADER_LIST
_HEADERS, _PUSH_PROMISE, _CONTINUATION = 0x1, 0x5, 0x9
_END_HEADERS = 0x4


class FrameGuard:
    """Checks each frame's declared length as its 9-byte header arrives, adds up a header
    block's frames (HEADERS or PUSH_PROMISE and their CONTINUATIONs), and counts frames.

    ``skip``: bytes before the first frame header (a server's peer sends the preface).
    ``max_frames`` and ``max_bytes``: what a connection may send in all (frames, and their
    payloads' bytes; 0: no limit), for a connection whose every frame costs a shared
    thread's time.
    """

    def __init__(self, limit: int = DEFAULT_MAX_FRAME, skip: int = 0,
                 block_limit: int = MAX_HEADER_BLOCK, max_frames: int = 0, max_bytes: int = 0):
        self.limit = limit
        self.block_limit = block_limit
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.skip = skip  # bytes of the current frame's payload (or the preface) still due
        self.header = b""
        self.block = 0  # bytes of the header block so far
        self.frames = 0
        self.received = 0  # payload bytes announced so far

    @classmethod
    def for_server(cls, limit: int = DEFAULT_MAX_FRAME, block_limit: int = MAX_HEADER_BLOCK,
                   max_frames: int = 0, max_bytes: int = 0) -> "FrameGuard":
        """A guard for what a server reads: the client's preface first."""
        return cls(limit, len(PREFACE), block_limit, max_frames, max_bytes)

    def feed(self, data: bytes) -> None:
        """Raises RemoteProtocolError for a frame over a limit."""
        view = memoryview(data)
        while view:
            if self.skip:
                step = min(self.skip, len(view))
                self.skip -= step
                view = view[step:]
                continue
            need = FRAME_HEADER_SIZE - len(self.header)
            self.header += bytes(view[:need])
            view = view[need:]
            if len(self.header) == FRAME_HEADER_SIZE:
                self._check(int.from_bytes(self.header[:3], "big"))

    def _check(self, length: int) -> None:
        if length > self.limit:
            raise RemoteProtocolError(f"HTTP/2 frame of {length} bytes (limit {self.limit})")
        self.frames += 1
        self.received += length
        if self.max_frames and self.frames > self.max_frames:
            raise RemoteProtocolError(f"over {self.max_frames} HTTP/2 frames on one connection")
        if self.max_bytes and self.received > self.max_bytes:
            raise RemoteProtocolError(f"over {self.max_bytes} bytes of HTTP/2 frames on one "
                                      "connection")
        self._count_block(length)
        self.skip, self.header = length, b""

    def _count_block(self, length: int) -> None:
        kind, flags = self.header[3], self.header[4]
        if kind not in (_HEADERS, _PUSH_PROMISE, _CONTINUATION):
            return
        self.block = (self.block if kind == _CONTINUATION else 0) + length
        if self.block > self.block_limit:
            raise RemoteProtocolError(f"HTTP/2 header block over {self.block_limit} bytes")
        if flags & _END_HEADERS:
            self.block = 0
