"""RFC 6455 framing, pure and socket-free (what gorilla/websocket does under v2ray 4.34).

v2ray writes every ``Write`` as one binary message (``connection.go``) and reads any data
message as a byte stream, so the decoder streams text, binary and continuation payloads alike
as ``("data", bytes)`` and never reassembles messages. Clients mask, servers do not (§5.1).
"""
from __future__ import annotations

import struct
from typing import Callable, List, Optional, Tuple, Union


from v2sync.common.errors import LocalProtocolError, RemoteProtocolError

OP_CONT, OP_TEXT, OP_BINARY = 0, 1, 2
OP_CLOSE, OP_PING, OP_PONG = 8, 9, 10
_DATA_OPS = frozenset({OP_CONT, OP_TEXT, OP_BINARY})
_OPCODES = _DATA_OPS | {OP_CLOSE, OP_PING, OP_PONG}
MAX_CONTROL = 125  # §5.5: control payloads fit the 7-bit length
CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_NO_STATUS = 1000, 1002, 1005
# The close codes gorilla takes from a peer (isValidReceivedCloseCode), and 3000-4999.
_RECEIVABLE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1014)})
_FIN, _RSV, _MASKED = 0x80, 0x70, 0x80
_LEN16, _LEN64 = 126, 127  # 7-bit length values announcing a 16- or 64-bit length
_HEAD16, _HEAD64 = struct.Struct("!BBH"), struct.Struct("!BBQ")
# mask_bytes hands back its own bytearray from this size (a bulk frame, sent and dropped),
# and bytes below it (control payloads, small frames: cheap to copy, and hashable).
_COPY_MASKED_BELOW = 4096
Event = Tuple  # ("data", bytes) | ("ping", bytes) | ("pong", bytes) | ("close", code, reason)


def _strxor() -> Callable[..., object]:
    """pycryptodome's ``strxor``, imported on the first mask: a process that never masks a
    frame (no WebSocket, or only its server end with nothing to mask) starts ~25 ms sooner
    without pycryptodome's cffi set-up."""
    global _STRXOR
    from Crypto.Util.strxor import strxor
    _STRXOR = strxor
    return strxor


_STRXOR: Optional[Callable[..., object]] = None


def mask_bytes(data: bytes, key: bytes, offset: int = 0) -> Union[bytes, bytearray]:
    """XOR ``data`` with ``key`` repeated, starting at key byte ``offset % 4`` (§5.3).

    pycryptodome's ``strxor`` does the XOR in C: 0.11 ms per MiB with the key stream built,
    where one big-integer XOR (from_bytes, ^, to_bytes) took 3.5 ms, as much CPU as the
    rest of a WS+TLS upload together (a client masks every byte it sends)."""
    size = len(data)
    if not size:
        return b""
    start = offset % 4
    out = bytearray((key[start:] + key[:start]) * (size // 4 + 1))
    del out[size:]
    (_STRXOR or _strxor())(data, out, output=out)  # in place: the key stream is masked
    return bytes(out) if size < _COPY_MASKED_BELOW else out


def encode_frame(opcode: int, payload: bytes, mask_key: Optional[bytes] = None) -> bytes:
    """One final (FIN) frame; masked iff ``mask_key`` is given, as a client must (§5.3)."""
    head, body = frame_parts(opcode, payload, mask_key)
    return head + body


def frame_parts(opcode: int, payload: bytes,
                mask_key: Optional[bytes] = None) -> Tuple[bytes, bytes]:
    """``encode_frame`` as (header with mask key, payload as sent): a writer that can send
    both in one call (``Connection.sendall_parts``) skips copying a large payload."""
    size = len(payload)
    if opcode not in _OPCODES:
        raise LocalProtocolError(f"unknown websocket opcode {opcode}")
    if opcode >= OP_CLOSE and size > MAX_CONTROL:
        raise LocalProtocolError(f"websocket control payload of {size} bytes exceeds 125")
    mask_bit = 0 if mask_key is None else _MASKED
    if size < _LEN16:
        head = bytes((_FIN | opcode, mask_bit | size))
    elif size <= 0xFFFF:
        head = _HEAD16.pack(_FIN | opcode, mask_bit | _LEN16, size)
    else:
        head = _HEAD64.pack(_FIN | opcode, mask_bit | _LEN64, size)
    if mask_key is None:
        return head, payload
    if len(mask_key) != 4:
        raise LocalProtocolError("websocket mask key must be 4 bytes")
    return head + mask_key, mask_bytes(payload, mask_key)


class FrameError(RemoteProtocolError):
    """A frame 4.34's gorilla refuses. ``close_code`` and ``reason`` are the close frame it
    then sends (a protocol error, 1002, names the problems as gorilla does); ``close_code``
    None: it sends none of its own (the connection's normal close follows)."""

    def __init__(self, reason: str, close_code: Optional[int] = CLOSE_PROTOCOL_ERROR):
        super().__init__(f"websocket: {reason}")
        self.reason = reason
        self.close_code = close_code


def encode_close(code: Optional[int] = CLOSE_NORMAL, reason: bytes = b"",
                 mask_key: Optional[bytes] = None) -> bytes:
    """A close frame; code None (or 1005, "no status") has an empty payload, as gorilla's
    ``FormatCloseMessage`` makes it."""
    if code is None or code == CLOSE_NO_STATUS:
        return encode_frame(OP_CLOSE, b"", mask_key)
    return encode_frame(OP_CLOSE, code.to_bytes(2, "big") + reason, mask_key)


def _header_size(second: int) -> int:
    length7 = second & 0x7F
    extended = 2 if length7 == _LEN16 else 8 if length7 == _LEN64 else 0
    return 2 + extended + (4 if second & _MASKED else 0)


def _close_event(payload: bytes) -> Event:
    """Under 2 bytes: no status (gorilla reads a 1-byte payload so too)."""
    if len(payload) < 2:
        return ("close", None, b"")
    code = int.from_bytes(payload[:2], "big")
    if code not in _RECEIVABLE_CODES and not 3000 <= code <= 4999:
        raise FrameError(f"bad close code {code}")
    try:
        payload[2:].decode("utf-8")  # §5.5.1 and gorilla both insist on UTF-8
    except UnicodeDecodeError:
        raise FrameError("invalid utf8 payload in close frame") from None
    return ("close", code, payload[2:])


class FrameDecoder:
    """Incremental decoder for one direction. ``feed(data)`` returns events: unmasked pieces
    of data frames as their bytes arrive (``("data", bytes)``; empty frames yield none, and
    a run of whole data frames may come out as one event: data is a stream), and whole
    ``("ping", p)``, ``("pong", p)``, ``("close", code_or_None, reason)``, in wire order.

    ``expect_masked``: True on the server, whose clients must mask. ``max_frame`` caps a data
    frame's declared length: a v2sync bound (gorilla has none) checked before its payload is
    read; v2ray sends frames of a few KiB. Only a header (<= 14 bytes) and a control payload
    (<= 125) are ever buffered. Errors raise ``RemoteProtocolError`` and leave the decoder
    unusable; so do bytes after a close frame (§5.5.1: the peer sends nothing after it).
    """

    def __init__(self, expect_masked: bool, max_frame: int = 1 << 20):
        self.expect_masked = expect_masked
        self.max_frame = max_frame
        self._head = bytearray()
        self._opcode: Optional[int] = None  # None between frames
        self._key: Optional[bytes] = None
        self._left = 0  # payload bytes still to come in this frame
        self._done = 0  # payload bytes seen in this frame: the mask key offset
        self._control = bytearray()
        self._in_message = False  # a fragmented data message awaits continuation frames
        self.closed = False

    def feed(self, data: bytes) -> List[Event]:
        events: List[Event] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self.closed:
                raise RemoteProtocolError("websocket data after a close frame")
            if self._opcode is None:
                if not self.expect_masked and not self._head:
                    pos = self._data_run(view, pos, events)
                    if pos == len(view):
                        break
                pos = self._read_header(view, pos, events)
            else:
                take = min(self._left, len(view) - pos)
                self._payload(view[pos:pos + take], events)
                pos += take
        return events

    def _data_run(self, view: memoryview, pos: int, events: List[Event]) -> int:
        """From ``pos``, every whole, unmasked, final data frame with a 7- or 16-bit length,
        as one ``("data", ...)`` event; returns where the run stopped. Anything else (a
        control frame, a cut frame, a bad header) is left to the general path, which checks
        it. 4.34's server sends each ~2 KiB VMess chunk as a frame of its own: a 64 KiB read
        holds ~32 of them, parsed here in one loop and joined once."""
        end = len(view)
        pieces = []
        in_message = self._in_message
        while end - pos >= 2:
            first, length = view[pos], view[pos + 1]  # mask bit set: length >= 128, stop
            if first == _FIN | OP_CONT:
                if not in_message:
                    break
            elif first not in (_FIN | OP_BINARY, _FIN | OP_TEXT) or in_message:
                break
            start = pos + 2
            if length == _LEN16:
                if end - pos < 4:
                    break
                length = view[pos + 2] << 8 | view[pos + 3]
                start = pos + 4
            elif length > _LEN16:
                break
            if start + length > end or length > self.max_frame:
                break
            if length:
                pieces.append(view[start:start + length])
            in_message = False
            pos = start + length
        self._in_message = in_message
        if pieces:
            events.append(("data", b"".join(pieces)))
        return pos

    def _read_header(self, view: memoryview, pos: int, events: List[Event]) -> int:
        head = self._head
        want = 2 if len(head) < 2 else _header_size(head[1])
        while len(head) < want:  # at most twice: the first 2 bytes tell the full size
            take = min(want - len(head), len(view) - pos)
            head += view[pos:pos + take]
            pos += take
            if len(head) == 2:
                self._check_start(head[0], head[1])  # as soon as gorilla would
            if len(head) < want:
                return pos
            want = _header_size(head[1])
        self._start_frame(events)
        return pos

    def _check_start(self, first: int, second: int) -> None:
        """The first two bytes, checked as gorilla checks them: every problem named, in its
        order and words, in one protocol error."""
        problems = [f"RSV{n} set" for n, bit in ((1, 0x40), (2, 0x20), (3, 0x10)) if first & bit]
        opcode, fin = first & 0x0F, bool(first & _FIN)
        if opcode in (OP_CLOSE, OP_PING, OP_PONG):
            if second & 0x7F > MAX_CONTROL:
                problems.append("len > 125 for control")
            if not fin:
                problems.append("FIN not set on control")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._in_message:
                problems.append("data before FIN")
        elif opcode == OP_CONT:
            if not self._in_message:
                problems.append("continuation after FIN")
        else:
            problems.append(f"bad opcode {opcode}")
        if bool(second & _MASKED) != self.expect_masked:
            problems.append("bad MASK")
        if problems:
            raise FrameError(", ".join(problems))

    def _start_frame(self, events: List[Event]) -> None:
        first, second = self._head[0], self._head[1]
        opcode = first & 0x0F
        length = self._length(second & 0x7F)
        if opcode in _DATA_OPS:
            self._check_data(bool(first & _FIN), length)
        self._key = bytes(self._head[-4:]) if self.expect_masked else None
        self._opcode, self._left, self._done = opcode, length, 0
        self._head.clear()
        if length == 0:
            self._finish(events)

    def _length(self, length7: int) -> int:
        if length7 == _LEN16:
            return int.from_bytes(self._head[2:4], "big")
        if length7 == _LEN64:
            length = int.from_bytes(self._head[2:10], "big")
            if length >> 63:  # gorilla: ErrReadLimit, and no close frame of its own
                raise FrameError("64-bit length with the top bit set", close_code=None)
            return length
        return length7

    def _check_data(self, fin: bool, length: int) -> None:
        if length > self.max_frame:
            raise FrameError(f"frame of {length} bytes exceeds v2sync's limit of "
                             f"{self.max_frame}", close_code=None)
        self._in_message = not fin

    def _payload(self, chunk: memoryview, events: List[Event]) -> None:
        piece = bytes(chunk) if self._key is None else mask_bytes(chunk, self._key, self._done)
        self._done += len(piece)
        self._left -= len(piece)
        if self._opcode in _DATA_OPS:
            events.append(("data", piece))
        else:
            self._control += piece
        if self._left == 0:
            self._finish(events)

    def _finish(self, events: List[Event]) -> None:
        opcode, payload = self._opcode, bytes(self._control)
        self._opcode = None
        self._control.clear()
        if opcode == OP_PING:
            events.append(("ping", payload))
        elif opcode == OP_PONG:
            events.append(("pong", payload))
        elif opcode == OP_CLOSE:
            events.append(_close_event(payload))
            self.closed = True
