"""Mux.cool frames, a pure codec (v2ray ``common/mux/frame.go``, ``reader.go``, ``writer.go``).

One frame::

    uint16 BE  metaLen            (at most 512 on read; at least 4)
    uint16 BE  session id
    byte       status             1 New, 2 Keep, 3 End, 4 KeepAlive
    byte       option             bit 0x01 Data, bit 0x02 Error
    -- New only:
    byte       network            1 TCP, 2 UDP
    port, address                 the port-first layout (PORT_FIRST: atyp 1 IPv4, 2 domain, 3 IPv6)
    -- option & Data:
    uint16 BE  dataLen, then dataLen bytes

As frame.go, the metadata is read whole (``metaLen`` bytes) and parsed inside those bytes, so
bytes past the parsed fields are skipped and a field running past ``metaLen`` is garbage.
An unknown status is refused here (4.34's workers stop on it, "unknown status").
"""
from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

from v2sync.common.cursor import Cursor, NeedMore
from v2sync.common.errors import LocalProtocolError, RemoteProtocolError
from v2sync.common.net import Address, AddressKind, Destination, Network
from v2sync.common.protocol.address import PORT_FIRST

MAX_META_LENGTH = 512      # frame.go Unmarshal: "invalid metalen"
MIN_META_LENGTH = 4        # session id, status, option
MIN_NEW_META_LENGTH = 8    # plus network, port and an address type
MAX_STREAM_CHUNK = 8 * 1024  # writer.go: TCP data is split into frames of at most 8 KiB
MAX_PACKET_SIZE = 2048     # reader.go PacketReader: "packet size too large" past buf.Size
MAX_DATA_LENGTH = 0xFFFF

OPTION_DATA = 0x01
OPTION_ERROR = 0x02

# client.go: the destination every outbound dials for a mux connection.
MUX_COOL_ADDRESS = Address("v1.mux.cool", AddressKind.DOMAIN)
MUX_COOL_PORT = 9527
MUX_COOL_DESTINATION = Destination(MUX_COOL_ADDRESS, MUX_COOL_PORT, Network.TCP)

_U16 = struct.Struct("!H")
_HEAD = struct.Struct("!HHBB")  # metaLen, session id, status, option


class Status(enum.IntEnum):
    NEW = 0x01
    KEEP = 0x02
    END = 0x03
    KEEP_ALIVE = 0x04


_NETWORK_BYTE = {Network.TCP: 0x01, Network.UDP: 0x02}
_BYTE_NETWORK = {byte: network for network, byte in _NETWORK_BYTE.items()}


@dataclass(frozen=True)
class Frame:
    session_id: int
    status: Status
    option: int = 0
    target: Optional[Destination] = None  # New frames only
    data: Optional[bytes] = None          # present when option has Data

    def destination(self) -> Destination:
        """A New frame's target (the decoder refuses a New frame without one)."""
        if self.target is None:
            raise RemoteProtocolError(f"mux: frame {self.status.name} has no target")
        return self.target

    @property
    def has_error(self) -> bool:
        return bool(self.option & OPTION_ERROR)


def is_mux_destination(dest: Optional[Destination]) -> bool:
    """server.go: a dispatch to the domain ``v1.mux.cool`` (any port) is a mux connection."""
    return dest is not None and dest.address == MUX_COOL_ADDRESS


def _read_meta(meta: Cursor, session_id: int, status: int, option: int) -> Frame:
    try:
        kind = Status(status)
    except ValueError:
        raise RemoteProtocolError(f"mux: unknown status {status}") from None
    if kind is not Status.NEW:
        return Frame(session_id, kind, option)
    if meta.remaining < MIN_NEW_META_LENGTH - MIN_META_LENGTH:
        raise RemoteProtocolError(f"mux: New metadata of {meta.end} bytes is too short")
    network_byte = meta.u8()
    try:
        address, port = PORT_FIRST.read(meta)
    except NeedMore:
        raise RemoteProtocolError("mux: address runs past the metadata") from None
    network = _BYTE_NETWORK.get(network_byte)
    if network is None:
        raise RemoteProtocolError(f"mux: unknown network type {network_byte}")
    return Frame(session_id, kind, option, Destination(address, port, network))


def parse_frame(buf: bytes, start: int = 0) -> Optional[Tuple[Frame, int]]:
    """``None`` (need more), ``(frame, consumed)``, or RemoteProtocolError for garbage.

    ``start``: where the frame begins in ``buf`` (a reader walks a chunk of many frames
    without copying its tail each time); ``consumed`` counts from there.

    A frame other than New is read with one unpack (``_parse_plain``): a flood of tiny
    frames (KeepAlive, Keep for unknown sessions) cost ~3.5 µs each through the Cursor,
    on the one thread that reads every stream of the connection, and stalled them all
    for seconds (4.34: ~0.3 µs; found by a review)."""
    if len(buf) - start >= _HEAD.size:
        meta_length, session_id, status, option = _HEAD.unpack_from(buf, start)
        kind = _PLAIN_STATUSES.get(status)
        if kind is not None and MIN_META_LENGTH <= meta_length <= MAX_META_LENGTH:
            return _parse_plain(buf, start, start + 2 + meta_length, session_id, kind, option)
    return _parse_any(buf, start)


_PLAIN_STATUSES = {status.value: status for status in Status if status is not Status.NEW}


def _parse_plain(buf: bytes, start: int, end: int, session_id: int, kind: Status,
                 option: int) -> Optional[Tuple[Frame, int]]:
    """A frame without New metadata whose metadata ends at ``end``."""
    if not option & OPTION_DATA:
        return None if end > len(buf) else (_bare_frame(session_id, kind, option), end - start)
    if end + 2 > len(buf):
        return None
    data_end = end + 2 + _U16.unpack_from(buf, end)[0]
    if data_end > len(buf):
        return None
    return Frame(session_id, kind, option, None, bytes(buf[end + 2:data_end])), data_end - start


@functools.lru_cache(maxsize=1024)
def _bare_frame(session_id: int, kind: Status, option: int) -> Frame:
    """Frames without data are immutable and repeat (each KeepAlive is the same one)."""
    return Frame(session_id, kind, option)


def _parse_any(buf: bytes, start: int) -> Optional[Tuple[Frame, int]]:
    cur = Cursor(buf, start)
    try:
        meta_length = cur.u16()
        if meta_length > MAX_META_LENGTH:
            raise RemoteProtocolError(f"mux: invalid metadata length {meta_length}")
        if meta_length < MIN_META_LENGTH:
            raise RemoteProtocolError(f"mux: metadata of {meta_length} bytes is too short")
        meta_start = cur.pos
        cur.take(meta_length)  # the whole metadata first, as frame.go reads it
        meta = Cursor(cur.buf, meta_start, meta_start + meta_length)
        session_id, status, option = meta.u16(), meta.u8(), meta.u8()
        frame = _read_meta(meta, session_id, status, option)
        if option & OPTION_DATA:
            frame = Frame(frame.session_id, frame.status, option, frame.target,
                          cur.take(cur.u16()))
    except NeedMore:
        return None
    return frame, cur.pos - start


def encode_frame(session_id: int, status: Status, data: Optional[bytes] = None,
                 target: Optional[Destination] = None, error: bool = False) -> bytes:
    """One frame; ``data`` None sends no Data option (``b""`` sends an empty Data)."""
    if not 0 <= session_id <= 0xFFFF:
        raise LocalProtocolError(f"mux: session id {session_id} out of range")
    option = (OPTION_DATA if data is not None else 0) | (OPTION_ERROR if error else 0)
    extra = b""
    if status is Status.NEW:
        if target is None:
            raise LocalProtocolError("mux: a New frame needs its target")
        extra = bytes([_NETWORK_BYTE[target.network]]) + PORT_FIRST.encode(target.address,
                                                                            target.port)
    head = _HEAD.pack(MIN_META_LENGTH + len(extra), session_id, status, option) + extra
    if data is None:
        return head
    if len(data) > MAX_DATA_LENGTH:
        raise LocalProtocolError(f"mux: {len(data)} data bytes do not fit one frame")
    return head + _U16.pack(len(data)) + data


def split_stream(data: bytes) -> List[bytes]:
    """TCP data as writer.go cuts it: pieces of at most 8 KiB."""
    if len(data) <= MAX_STREAM_CHUNK:
        return [data]
    view = memoryview(data)
    return [bytes(view[i:i + MAX_STREAM_CHUNK]) for i in range(0, len(data), MAX_STREAM_CHUNK)]


def encode_end(session_id: int, error: bool = False) -> bytes:
    return encode_frame(session_id, Status.END, error=error)
