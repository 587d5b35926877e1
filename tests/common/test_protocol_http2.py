"""The HTTP/2 frame guard (common/protocol/http2.py): frame lengths refused at their
headers, header blocks added up across CONTINUATIONs, frames counted. Socket-free; fed
whole, one byte at a time, and with the next frame's bytes behind."""
import pytest

from v2sync.common.errors import RemoteProtocolError
from v2sync.common.protocol.http2 import PREFACE, FrameGuard

HEADERS, CONTINUATION, SETTINGS, DATA = 0x1, 0x9, 0x4, 0x0
END_HEADERS = 0x4


def frame(length: int, kind: int, flags: int = 0, payload: bytes = b"") -> bytes:
    body = payload or b"p" * length
    return length.to_bytes(3, "big") + bytes([kind, flags]) + (1).to_bytes(4, "big") + body


def pieces(data: bytes):
    """The same bytes whole and one at a time."""
    return [[data], [bytes([b]) for b in data]]


def feed_all(guard: FrameGuard, parts) -> None:
    for part in parts:
        guard.feed(part)


def test_a_long_frame_is_refused_at_its_header() -> None:
    ok = PREFACE + frame(5, DATA, payload=b"hello")
    for parts in pieces(ok):
        feed_all(FrameGuard.for_server(16384), parts)
    guard = FrameGuard.for_server(16384)
    guard.feed(ok)
    with pytest.raises(RemoteProtocolError, match="16777215 bytes"):
        guard.feed(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")  # no payload needed


def test_a_client_guard_expects_no_preface() -> None:
    for parts in pieces(frame(16384, DATA) + frame(0, SETTINGS)):
        guard = FrameGuard(16384)
        feed_all(guard, parts)
        assert guard.frames == 2
    with pytest.raises(RemoteProtocolError, match="16385 bytes"):
        FrameGuard(16384).feed(frame(16385, DATA)[:9])


def test_header_blocks_add_up_and_start_again_at_end_headers() -> None:
    def block(continuations: int, last_flags: int) -> bytes:
        out = frame(1000, HEADERS)
        for i in range(continuations):
            out += frame(1000, CONTINUATION, last_flags if i == continuations - 1 else 0)
        return out

    fits = block(3, END_HEADERS) * 3  # three blocks of 4,000 bytes each
    for parts in pieces(PREFACE + fits + frame(9, DATA)):  # trailing: the next frame
        feed_all(FrameGuard(16384, skip=len(PREFACE), block_limit=4000), parts)
    with pytest.raises(RemoteProtocolError, match="header block over 4000 bytes"):
        FrameGuard(16384, skip=len(PREFACE), block_limit=4000).feed(PREFACE + block(4, 0))


@pytest.mark.parametrize("limits, frames, refusal", [
    ({"max_frames": 10}, [frame(6, SETTINGS)] * 10, "over 10 HTTP/2 frames"),
    ({"max_bytes": 4096}, [frame(1024, DATA)] * 4, "over 4096 bytes"),
])
def test_a_connection_may_send_so_many_frames_and_bytes(limits, frames, refusal) -> None:
    allowed = PREFACE + b"".join(frames)
    for parts in pieces(allowed):
        feed_all(FrameGuard.for_server(**limits), parts)
    guard = FrameGuard.for_server(**limits)
    guard.feed(allowed)
    with pytest.raises(RemoteProtocolError, match=refusal):
        guard.feed(frames[0][:9])  # the next frame's header is refused
