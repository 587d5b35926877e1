"""VMess body framing: incremental chunk readers and writers for every security and option.

v2ray ``common/crypto/{auth,chunk}.go`` and ``proxy/vmess/encoding/{auth,client,server}.go``.
A reader is fed bytes in pieces of any size and returns the plaintext chunks it completed;
a writer turns plaintext into wire bytes. Both are per direction and not thread-safe.

Authenticated chunk (``AuthenticationReader``/``Writer``)::

    [L: 2, masked] [seal(plaintext): len+overhead] [padding: P random bytes]

``L = len + overhead + P``; an empty plaintext (``L == overhead + P``) ends the stream.
With ChunkMasking ``L`` is XORed with the next 2 bytes of SHAKE128(IV); with GlobalPadding
``P = next2 % 64`` is drawn *before* that mask, on both sides. AEAD nonces are
``u16(count) || IV[2:12]``, count wrapping at 2**16 like Go's uint16.
"""
from __future__ import annotations

import hashlib
import os
import struct
from typing import List, Optional, Tuple, Union

from v2sync.common.crypto.aead import AEAD_TAG_SIZE, AEADCipher, aes_gcm, chacha20_poly1305
from v2sync.common.crypto.checksum import fnv1a32
from v2sync.common.crypto.shake import ShakeStream
from v2sync.common.crypto.stream import AesCfb, aes_cfb_decryptor, aes_cfb_encryptor
from v2sync.common.errors import (AuthenticationError, LocalProtocolError, ProtocolError,
                                  RemoteProtocolError)
from v2sync.proxy.vmess.ids import Security

# Request options that shape the body (common/protocol/headers.go). 0x02 ConnectionReuse is
# defined by the protocol but ignored by 4.34.
OPTION_CHUNK_STREAM = 0x01
OPTION_CONNECTION_REUSE = 0x02
OPTION_CHUNK_MASKING = 0x04
OPTION_GLOBAL_PADDING = 0x08

BUFFER_SIZE = 2048            # common/buf.Size: the writers' whole-chunk limit
MAX_PADDING = 64              # ShakeSizeParser.MaxPaddingLen
SIZE_BYTES = 2
CHUNK_STREAM_SLICE = 8192     # ChunkStreamWriter sliceSize
MAX_READ_CHUNK = 0xFFFF       # readers take any 16-bit length
# Plaintext per chunk our *stream* writer emits. 4.34's writer stops at 2048 bytes per chunk,
# but its reader takes any 16-bit size (common/crypto/auth.go readInternal: sizes above
# buf.Size go through bytespool.Alloc), so bigger chunks are valid on the wire. AES-GCM
# itself runs at ~11 GB/s here; the cost is Python's, per chunk. 63 KiB (with tag and the
# largest padding, still under the 16-bit size field) moved 1.1x the bytes per second of
# 16 KiB chunks through a VMess pair (tools/bench.py vmess). Datagrams keep 2048 bytes.
STREAM_CHUNK_PAYLOAD = 63 * 1024
FNV_OVERHEAD = 4
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_COMPACT_AT = 1 << 16


class _Inbox:
    """A byte FIFO that consumes from the front without quadratic copying."""

    __slots__ = ("_data", "_pos")

    def __init__(self) -> None:
        self._data = bytearray()
        self._pos = 0

    def __len__(self) -> int:
        return len(self._data) - self._pos

    def append(self, data: bytes) -> None:
        self._data += data

    def take(self, n: int) -> bytes:
        out = bytes(self._data[self._pos:self._pos + n])
        self.advance(self._pos + n)
        return out

    def window(self) -> Tuple[bytearray, int]:
        """The buffer and where unread bytes start, for a parser loop; then ``advance``."""
        return self._data, self._pos

    def advance(self, pos: int) -> None:
        """Everything before ``pos`` (an index into ``window()``'s buffer) is consumed."""
        self._pos = pos
        if pos == len(self._data):  # the common case: everything consumed
            self._data = bytearray()
            self._pos = 0
        elif pos >= _COMPACT_AT and pos * 2 >= len(self._data):
            del self._data[:pos]
            self._pos = 0

    def peek(self) -> bytes:
        return bytes(self._data[self._pos:])


class SizeCodec:
    """Chunk length on the wire: plain big-endian, or masked with SHAKE128(IV)."""

    __slots__ = ("_shake",)

    def __init__(self, mask_seed: Optional[bytes]):
        self._shake = ShakeStream(mask_seed) if mask_seed is not None else None

    def encode(self, size: int) -> bytes:
        return _U16.pack(size ^ self._shake.next_u16() if self._shake else size)

    def decode(self, raw: bytes) -> int:
        (size,) = _U16.unpack(raw)
        return size ^ self._shake.next_u16() if self._shake else size

    def next_padding(self) -> int:
        """GlobalPadding length; only valid with masking (4.34 panics otherwise)."""
        if self._shake is None:
            raise LocalProtocolError("GlobalPadding requires ChunkMasking")
        return self._shake.next_u16() % MAX_PADDING

    def peek_padding(self) -> int:
        """The length ``next_padding`` will give, not drawn yet."""
        if self._shake is None:
            raise LocalProtocolError("GlobalPadding requires ChunkMasking")
        return self._shake.peek_u16() % MAX_PADDING


class AeadAuth:
    """AES-GCM or ChaCha20-Poly1305 chunks with the VMess counter nonce (GenerateChunkNonce)."""

    overhead = AEAD_TAG_SIZE

    def __init__(self, cipher: AEADCipher, iv: bytes):
        self._cipher = cipher
        self._nonce_tail = iv[2:12]
        self._count = 0

    def _nonce(self) -> bytes:
        nonce = _U16.pack(self._count) + self._nonce_tail
        self._count = (self._count + 1) & 0xFFFF
        return nonce

    def seal(self, plaintext: bytes) -> bytes:
        return self._cipher.seal(self._nonce(), plaintext)

    def open(self, sealed: bytes) -> bytes:
        return self.open_all([sealed])[0]

    def open_all(self, sealed: List[bytes]) -> List[bytes]:
        """``open`` of each, in order, in one loop: 4.34 sends 2 KiB chunks, 512 per MiB."""
        count, tail, pack = self._count, self._nonce_tail, _U16.pack
        nonces = [pack((count + i) & 0xFFFF) + tail for i in range(len(sealed))]
        opened = self._cipher.open_each(nonces, sealed)
        self._count = (count + len(sealed)) & 0xFFFF  # not when one failed: see open_good
        return opened


class FnvAuth:
    """Legacy chunks: FNV-1a-32 of the data, then the data (encoding/auth.go)."""

    overhead = FNV_OVERHEAD

    def seal(self, plaintext: bytes) -> bytes:
        return _U32.pack(fnv1a32(plaintext)) + plaintext

    def open(self, sealed: bytes) -> bytes:
        data = sealed[FNV_OVERHEAD:]
        if _U32.unpack(sealed[:FNV_OVERHEAD])[0] != fnv1a32(data):
            raise AuthenticationError("vmess: chunk checksum mismatch")
        return data

    def open_all(self, sealed: List[bytes]) -> List[bytes]:
        return [self.open(chunk) for chunk in sealed]


class NoOpAuth:
    """Security "none" in packet mode: the length framing without any check."""

    overhead = 0

    def seal(self, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, sealed: bytes) -> bytes:
        return bytes(sealed)  # the reader may hand in a slice of its bytearray

    def open_all(self, sealed: List[bytes]) -> List[bytes]:
        return [bytes(chunk) for chunk in sealed]


Auth = Union[AeadAuth, FnvAuth, NoOpAuth]


def open_good(auth: Auth, sealed: List[bytes]) -> Tuple[List[bytes], Optional[ProtocolError]]:
    """``auth.open_all(sealed)``, or, when a chunk fails, the chunks before it and the
    error: a bad chunk must not take the good ones that came in the same read with it."""
    try:
        return auth.open_all(sealed), None
    except AuthenticationError as e:
        failure = e
    opened: List[bytes] = []
    for chunk in sealed:  # again one by one: an open_all that fails moves no counter
        try:
            opened.append(auth.open(chunk))
        except AuthenticationError:
            break
    return opened, failure


class _ChecksAfterFeed:
    """A body reader's bad chunk (a length out of bounds, a chunk that fails to open) is
    kept by ``feed``, which returns the chunks before it, and raised by ``check()`` once
    the caller has handed those on: a bad chunk must not take the good ones read with it.
    The stream ends there: ``feed`` raises it too from then on."""

    _failure: Optional[ProtocolError] = None

    def check(self) -> None:
        if self._failure is not None:
            raise self._failure


class ChunkReader(_ChecksAfterFeed):
    """Authenticated chunks in (AuthenticationReader); one chunk per datagram for UDP."""

    def __init__(self, auth: Auth, sizes: SizeCodec, padding: bool = False,
                 cfb: Optional[AesCfb] = None, max_chunk_size: int = MAX_READ_CHUNK):
        self._auth, self._sizes, self._padding, self._cfb = auth, sizes, padding, cfb
        self._max = max_chunk_size
        self._inbox = _Inbox()
        self._size: Optional[int] = None  # length already decoded (mask drawn), body pending
        self._pad = 0
        self.eof = False
        self._eos_size = 0  # sealed size of the end-of-stream chunk, skipped in ``unused``

    def _take(self, n: int) -> bytes:
        raw = self._inbox.take(n)
        return self._cfb.update(raw) if self._cfb else raw

    def _read_size(self, raw: bytes) -> None:
        """Decode a chunk's length (drawing its padding first, as the writer did)."""
        pad = self._sizes.next_padding() if self._padding else 0  # drawn before the mask
        self._check_size(self._sizes.decode(raw), pad)

    def _check_size(self, size: int, pad: int) -> None:
        """Refuse a bad length, mark the end at the empty chunk, or expect the chunk."""
        empty = self._auth.overhead + pad
        if size > self._max:
            raise RemoteProtocolError(f"vmess: chunk of {size} bytes exceeds {self._max}")
        if size < empty:
            raise RemoteProtocolError(f"vmess: chunk of {size} bytes is shorter than its overhead")
        if size == empty:
            # Like auth.go readInternal, stop at the length: the empty chunk's tag and padding
            # are skipped, never checked.
            self.eof = True
            self._eos_size = size
            return
        self._size, self._pad = size, pad

    def feed(self, data: bytes) -> List[bytes]:
        """Plaintext of every chunk completed by ``data`` (never empty chunks), up to the
        first bad one; call ``check()`` once they are handed on."""
        self.check()
        self._inbox.append(data)
        return self._feed_decrypting() if self._cfb is not None else self._feed_sealed()

    def _feed_sealed(self) -> List[bytes]:
        # The AEAD path, and the hot one (v2ray sends 2 KiB chunks, 512 per MiB): parse in
        # place, one copy per chunk (the slice handed to the cipher) instead of three, and
        # a length that passes its checks is decoded inline (``_read_size`` otherwise).
        buf, pos = self._inbox.window()
        end = len(buf)
        sealed: List[bytes] = []  # opened together once the lengths are walked
        try:
            pos = self._walk(buf, pos, end, sealed)
        except ProtocolError as e:  # a bad length: the chunks before it still go on
            self._failure = e
        # 4.34 silently drops a chunk of <= 2048 bytes that fails to open (auth.go
        # readBuffer returns nil); rejecting is the safe reading of that bug.
        opened, failure = open_good(self._auth, sealed) if sealed else ([], None)
        self._failure = self._failure or failure
        return opened

    def _walk(self, buf, pos: int, end: int, sealed: List[bytes]) -> int:
        """Collect the sealed chunks of ``buf[pos:end]`` whose lengths pass; the bytes
        taken are consumed even when a length raises."""
        shake = self._sizes._shake
        padding = self._padding
        smallest = self._auth.overhead + (MAX_PADDING if padding else 0)
        try:
            while not self.eof:
                size = self._size
                if size is None:
                    if end - pos < SIZE_BYTES:
                        break
                    if shake is None:
                        pos += SIZE_BYTES  # unmasked lengths: the general path
                        self._read_size(buf[pos - SIZE_BYTES:pos])
                        continue
                    if padding:  # the padding's draw comes first, then the mask's
                        pad, mask = shake.next_pair()
                        pad %= MAX_PADDING
                    else:
                        pad, mask = 0, shake.next_u16()
                    size = _U16.unpack_from(buf, pos)[0] ^ mask
                    pos += SIZE_BYTES
                    if size <= smallest or size > self._max:
                        self._check_size(size, pad)  # raises, or marks the end
                        continue
                    self._size, self._pad = size, pad
                stop = pos + size
                if end < stop:
                    break
                sealed.append(buf[pos:stop - self._pad])
                pos, self._size = stop, None
        finally:
            self._inbox.advance(pos)
        return pos

    def _feed_decrypting(self) -> List[bytes]:
        """Legacy chunks under AES-CFB: every byte taken must pass the stream in order."""
        out: List[bytes] = []
        try:
            while not self.eof:
                if self._size is None:
                    if len(self._inbox) < SIZE_BYTES:
                        break
                    self._read_size(self._take(SIZE_BYTES))
                    continue
                if len(self._inbox) < self._size:
                    break
                body = self._take(self._size)
                self._size = None
                out.append(self._auth.open(body[:len(body) - self._pad]))
        except ProtocolError as e:  # a bad length or checksum: the chunks before it go on
            self._failure = e
        return out

    @property
    def unused(self) -> bytes:
        """Bytes fed after the end-of-stream chunk (still encrypted for the legacy cipher)."""
        return self._inbox.peek()[self._eos_size:] if self.eof else b""


class ChunkWriter:
    """Authenticated chunks out (AuthenticationWriter)."""

    def __init__(self, auth: Auth, sizes: SizeCodec, padding: bool = False,
                 cfb: Optional[AesCfb] = None, packet: bool = False):
        self._auth, self._sizes, self._padding, self._cfb = auth, sizes, padding, cfb
        self._packet = packet
        self.stream_payload = STREAM_CHUNK_PAYLOAD
        self.dropped = 0  # datagrams too large for one chunk with their padding

    def _seal(self, plaintext: bytes) -> bytes:
        parts: List[bytes] = []
        self._seal_into(parts, plaintext)
        return b"".join(parts)

    def _seal_into(self, parts: List[bytes], plaintext) -> None:
        """Append one chunk's pieces; they are joined once for the whole write."""
        pad = self._sizes.next_padding() if self._padding else 0  # drawn before the mask
        parts.append(self._sizes.encode(len(plaintext) + self._auth.overhead + pad))
        parts.append(self._auth.seal(plaintext))
        if pad:
            parts.append(os.urandom(pad))

    def _out(self, wire: bytes) -> bytes:
        return self._cfb.update(wire) if self._cfb else wire

    def encode(self, data: bytes) -> bytes:
        """Wire bytes for ``data``: 1+ chunks for a stream, exactly one for a datagram."""
        if not data:
            return b""
        if self._packet:
            return self._out(self._seal(data)) if self._fits(data) else b""
        step = self.stream_payload
        parts: List[bytes] = []
        with memoryview(data) as view:  # slices without copies; each chunk is sealed from it
            for i in range(0, len(data), step):
                self._seal_into(parts, view[i:i + step])
            return self._out(b"".join(parts))

    def encode_eof(self) -> bytes:
        """The end-of-stream chunk (an empty plaintext)."""
        return self._out(self._seal(b""))

    def _fits(self, datagram: bytes) -> bool:
        """Whether ``datagram`` with this chunk's own padding fits one 2 KiB buffer, as
        4.34's AuthenticationWriter.seal checks it: 4.34 sends it then, and drops it
        otherwise, but only after drawing its padding, which desyncs the mask stream.
        Here a datagram that does not fit is dropped before any draw (``dropped`` counts
        it), so the connection and both streams go on."""
        pad = self._sizes.peek_padding() if self._padding else 0
        if SIZE_BYTES + len(datagram) + self._auth.overhead + pad <= BUFFER_SIZE:
            return True
        self.dropped += 1
        return False


class ChunkStreamReader(_ChecksAfterFeed):
    """Security "none" over TCP: ``[L masked][L raw bytes]``, ``L == 0`` ends the stream."""

    def __init__(self, sizes: SizeCodec, max_chunk_size: int = MAX_READ_CHUNK):
        self._sizes = sizes
        self._max = max_chunk_size
        self._inbox = _Inbox()
        self._left = 0
        self.eof = False

    def feed(self, data: bytes) -> List[bytes]:
        """Data as it arrives: a chunk may come out in pieces (ChunkStreamReader.ReadAtMost);
        call ``check()`` once they are handed on."""
        self.check()
        self._inbox.append(data)
        out: List[bytes] = []
        while not self.eof:
            if self._left == 0:
                if len(self._inbox) < SIZE_BYTES:
                    break
                self._left = self._sizes.decode(self._inbox.take(SIZE_BYTES))
                if self._left > self._max:
                    self._failure = RemoteProtocolError(
                        f"vmess: chunk of {self._left} bytes exceeds {self._max}")
                    break
                self.eof = self._left == 0
                continue
            if not self._inbox:
                break
            piece = self._inbox.take(min(self._left, len(self._inbox)))
            self._left -= len(piece)
            out.append(piece)
        return out

    @property
    def unused(self) -> bytes:
        return self._inbox.peek() if self.eof else b""


class ChunkStreamWriter:
    """Security "none" over TCP, writer side (ChunkStreamWriter)."""

    def __init__(self, sizes: SizeCodec):
        self._sizes = sizes

    def encode(self, data: bytes) -> bytes:
        parts: List[bytes] = []
        for i in range(0, len(data), CHUNK_STREAM_SLICE):
            piece = data[i:i + CHUNK_STREAM_SLICE]
            parts += (self._sizes.encode(len(piece)), piece)
        return b"".join(parts)

    def encode_eof(self) -> bytes:
        return self._sizes.encode(0)


class RawReader(_ChecksAfterFeed):
    """No ChunkStream option: the body is the bare (possibly CFB-encrypted) stream."""

    eof = False  # only the connection closing ends a raw stream
    unused = b""

    def __init__(self, cfb: Optional[AesCfb] = None):
        self._cfb = cfb

    def feed(self, data: bytes) -> List[bytes]:
        if not data:
            return []
        return [self._cfb.update(data) if self._cfb else bytes(data)]


class RawWriter:
    def __init__(self, cfb: Optional[AesCfb] = None):
        self._cfb = cfb

    def encode(self, data: bytes) -> bytes:
        return self._cfb.update(data) if self._cfb else bytes(data)

    def encode_eof(self) -> bytes:
        return b""  # nothing on the wire: the peer sees the connection close


BodyReader = Union[ChunkReader, ChunkStreamReader, RawReader]
BodyWriter = Union[ChunkWriter, ChunkStreamWriter, RawWriter]


def chacha20_poly1305_key(key: bytes) -> bytes:
    """32-byte ChaCha20 key from a 16-byte body key: MD5(k) || MD5(MD5(k)) (auth.go)."""
    first = hashlib.md5(key).digest()
    return first + hashlib.md5(first).digest()


def _aead_auth(security: Security, key: bytes, iv: bytes) -> AeadAuth:
    if security is Security.AES128_GCM:
        return AeadAuth(aes_gcm(key), iv)
    return AeadAuth(chacha20_poly1305(chacha20_poly1305_key(key)), iv)


def _check_options(option: int, error: type) -> None:
    if option & OPTION_GLOBAL_PADDING and not option & OPTION_CHUNK_MASKING:
        raise error("vmess: GlobalPadding (0x08) without ChunkMasking (0x04)")


def new_body_reader(security: Security, option: int, packet: bool, key: bytes, iv: bytes,
                    cfb: Optional[AesCfb] = None,
                    max_chunk_size: int = MAX_READ_CHUNK) -> BodyReader:
    """The reader for one direction (server.go DecodeRequestBody, client.go DecodeResponseBody).

    ``packet`` is True for Cmd UDP (one chunk per datagram). ``key``/``iv`` are that
    direction's body key and IV. ``cfb`` is the legacy stream to
    continue (the response after a legacy header); by default a fresh one from key/iv.
    """
    _check_options(option, RemoteProtocolError)
    sizes = SizeCodec(iv if option & OPTION_CHUNK_MASKING else None)
    padding = bool(option & OPTION_GLOBAL_PADDING)
    chunked = bool(option & OPTION_CHUNK_STREAM)
    if security in (Security.AES128_GCM, Security.CHACHA20_POLY1305):
        return ChunkReader(_aead_auth(security, key, iv), sizes, padding, None, max_chunk_size)
    if security is Security.NONE:
        if not chunked:
            return RawReader()
        if packet:
            return ChunkReader(NoOpAuth(), sizes, padding, None, max_chunk_size)
        return ChunkStreamReader(sizes, max_chunk_size)
    if security is Security.LEGACY:
        stream = cfb or aes_cfb_decryptor(key, iv)
        if not chunked:
            return RawReader(stream)
        return ChunkReader(FnvAuth(), sizes, padding, stream, max_chunk_size)
    raise RemoteProtocolError(f"vmess: no body reader for security {security.name}")


def new_body_writer(security: Security, option: int, packet: bool, key: bytes, iv: bytes,
                    cfb: Optional[AesCfb] = None) -> BodyWriter:
    """The writer for one direction (client.go EncodeRequestBody, server.go EncodeResponseBody)."""
    _check_options(option, LocalProtocolError)
    sizes = SizeCodec(iv if option & OPTION_CHUNK_MASKING else None)
    padding = bool(option & OPTION_GLOBAL_PADDING)
    chunked = bool(option & OPTION_CHUNK_STREAM)
    if security in (Security.AES128_GCM, Security.CHACHA20_POLY1305):
        return ChunkWriter(_aead_auth(security, key, iv), sizes, padding, None, packet)
    if security is Security.NONE:
        if not chunked:
            return RawWriter()
        if packet:
            return ChunkWriter(NoOpAuth(), sizes, padding, None, packet=True)
        return ChunkStreamWriter(sizes)
    if security is Security.LEGACY:
        stream = cfb or aes_cfb_encryptor(key, iv)
        if not chunked:
            return RawWriter(stream)
        return ChunkWriter(FnvAuth(), sizes, padding, stream, packet)
    raise LocalProtocolError(f"vmess: no body writer for security {security.name}")
