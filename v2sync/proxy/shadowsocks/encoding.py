"""Shadowsocks wire format, AEAD and "none" (v2ray ``proxy/shadowsocks/{config,protocol}.go``).

Pure codec: nothing here touches a socket. SIP004 as 4.34 speaks it:

TCP, each direction::

    [salt] ( [seal(len: u16 BE)] [seal(payload: len bytes)] )*

``seal`` is the method's AEAD under ``subkey = HKDF-SHA1(key, salt, "ss-subkey")`` with a
12-byte little-endian counter nonce starting at 0, bumped once per seal (so twice per
chunk). The request's plaintext starts with the SOCKS-style target address. 4.34's reader
takes any 16-bit length and, as a quirk of ``AuthenticationReader``, reads a zero length as
the end of the stream; its writer puts at most 2014 payload bytes in a chunk. There is no
end-of-stream chunk on the wire: a TCP close ends the stream. A datagram (UDP) is
``salt || seal_nonce0(address || payload)``. The "none" method sends the same plaintext
without salt, lengths or tags.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

from v2sync.common.crypto.aead import AEAD_TAG_SIZE, AEADCipher, aes_gcm, chacha20_poly1305
from v2sync.common.crypto.password import evp_bytes_to_key, ss_subkey
from v2sync.common.cursor import Cursor, NeedMore
from v2sync.common.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from v2sync.common.net import Address
from v2sync.common.protocol.address import SOCKS

NONCE_SIZE = 12
LENGTH_SIZE = 2
SEALED_LENGTH = LENGTH_SIZE + AEAD_TAG_SIZE
# 4.34 adds the tag to the 16-bit length in a uint16 (chunk.go AEADChunkSizeParser), so a
# length above this wraps around there; such a chunk is refused here.
MAX_CHUNK_PAYLOAD = 0xFFFF - AEAD_TAG_SIZE
# What our writer puts in one chunk: SIP004's cap (0x3FFF), which every implementation
# accepts (4.34's reader takes up to MAX_CHUNK_PAYLOAD; shadowsocks-libev only 0x3FFF).
WRITE_CHUNK_PAYLOAD = 0x3FFF
# 4.34 reads each datagram into one 2 KiB buffer (buf.Size, transport/internet/udp/hub.go):
# a longer one arrives truncated and fails its tag. Its encoder writes into the same size.
MAX_DATAGRAM = 2048
ATYP_MASK = 0x0F  # protocol.go: the high nibble of the address type is ignored
_LENGTH = struct.Struct("!H")


@dataclass(frozen=True)
class Method:
    """One cipher method: its sizes and how an AEAD object is made from a subkey."""

    name: str
    key_size: int
    salt_size: int
    aead: Optional[Callable[[bytes], AEADCipher]]

    @property
    def is_aead(self) -> bool:
        return self.aead is not None


AES_128_GCM = Method("aes-128-gcm", 16, 16, aes_gcm)
AES_256_GCM = Method("aes-256-gcm", 32, 32, aes_gcm)
CHACHA20_POLY1305 = Method("chacha20-poly1305", 32, 32, chacha20_poly1305)
NONE = Method("none", 0, 0, None)

# infra/conf/shadowsocks.go cipherFromString, matched case-insensitively. Nothing else:
# 4.34 has no stream ciphers ("unknown cipher method").
METHODS = {
    "aes-128-gcm": AES_128_GCM, "aead_aes_128_gcm": AES_128_GCM,
    "aes-256-gcm": AES_256_GCM, "aead_aes_256_gcm": AES_256_GCM,
    "chacha20-poly1305": CHACHA20_POLY1305, "aead_chacha20_poly1305": CHACHA20_POLY1305,
    "chacha20-ietf-poly1305": CHACHA20_POLY1305,
    "none": NONE, "plain": NONE,
}


def method_named(name: str) -> Optional[Method]:
    return METHODS.get(name.lower())


@dataclass(frozen=True)
class Account:
    """A method with its master key (``MemoryAccount``)."""

    method: Method
    key: bytes

    @classmethod
    def from_password(cls, method: Method, password: str) -> "Account":
        # passwordToCipherKey always emits at least one MD5 block, so "none" has a
        # 16-byte key too; 4.34 seeds its drain sizes from it.
        size = max(method.key_size, 16)
        key = evp_bytes_to_key(password.encode("utf-8", "surrogateescape"), size)
        return cls(method, key[:method.key_size] if method.is_aead else key)

    def cipher(self, salt: bytes) -> AEADCipher:
        assert self.method.aead is not None  # callers check is_aead
        return self.method.aead(ss_subkey(self.key, salt))


class _Sealer:
    """One direction's AEAD with its counter nonce (``GenerateInitialAEADNonce``)."""

    __slots__ = ("_cipher", "_count")

    def __init__(self, cipher: AEADCipher):
        self._cipher = cipher
        self._count = 0

    def _nonce(self) -> bytes:
        nonce = self._count.to_bytes(NONCE_SIZE, "little")
        self._count += 1
        return nonce

    def seal(self, plaintext) -> bytes:
        return self._cipher.seal(self._nonce(), plaintext)

    def open(self, sealed) -> bytes:
        return self._cipher.open(self._nonce(), sealed)


class StreamReader:
    """One TCP direction in: ``feed`` wire bytes, get the plaintext of completed chunks.

    ``wire_used`` counts the bytes 4.34's reader would have consumed so far (the salt and
    every whole length or payload block), for the drain after a failed handshake.
    """

    def __init__(self, account: Account):
        self._account = account
        self._buf = bytearray()
        self._sealer: Optional[_Sealer] = None
        self._size: Optional[int] = None  # a decoded length whose payload is pending
        self.eof = False
        # A block that did not open (wrong key, bad tag, bad length): the stream ends there,
        # after the chunks before it, which are returned (``feed`` raises it from then on).
        # A reader that has no plaintext yet (a request's target) raises it itself.
        self.failure: Optional[ProtocolError] = None
        self.wire_used = 0
        self.salt_used = 0

    @property
    def salted(self) -> bool:
        """The peer's salt has been read (always, for a method without one)."""
        return self._sealer is not None or not self._account.method.is_aead

    @property
    def cut(self) -> bool:
        """Bytes of an unfinished block are held: a stream that ends now ends mid-chunk."""
        return bool(self._buf) or self._size is not None

    @property
    def ended(self) -> bool:
        """No more plaintext will come: a zero-length chunk, or a failure kept back."""
        return self.eof or self.failure is not None

    def feed(self, data: bytes) -> List[bytes]:
        if self.failure is not None:
            raise self.failure
        if not self._account.method.is_aead:
            self.wire_used += len(data)
            return [bytes(data)] if data else []
        source: Union[bytes, bytearray] = data
        if self._buf:
            self._buf += data
            source = self._buf
        out: List[bytes] = []
        pos = 0
        with memoryview(source) as view:  # chunks are opened where they lie, not copied out
            try:
                if self._sealer is None:
                    pos = self._start(view)
                if self._sealer is not None:
                    pos = self._chunks(view, pos, out)
            finally:
                self._buf = bytearray(view[pos:])  # the unfinished tail, usually short
        return out

    def _start(self, view: memoryview) -> int:
        salt_size = self._account.method.salt_size
        if len(view) < salt_size:
            return 0
        self._sealer = _Sealer(self._account.cipher(bytes(view[:salt_size])))
        self.wire_used += salt_size
        self.salt_used = salt_size
        return salt_size

    def _chunks(self, view: memoryview, pos: int, out: List[bytes]) -> int:
        """Open every whole block from ``pos``; returns where the unread bytes start."""
        sealer = self._sealer
        assert sealer is not None
        end = len(view)
        try:
            return self._open_blocks(sealer, view, pos, end, out)
        except ProtocolError as e:
            self.failure = e  # the stream ends here; the chunks before it were authentic
            return end

    def _open_blocks(self, sealer: "_Sealer", view: memoryview, pos: int, end: int,
                     out: List[bytes]) -> int:
        while not self.eof:
            if self._size is None:
                if end - pos < SEALED_LENGTH:
                    break
                self.wire_used += SEALED_LENGTH  # read whole before it is opened, as 4.34
                self._size = self._read_length(sealer.open(view[pos:pos + SEALED_LENGTH]))
                pos += SEALED_LENGTH
                continue
            stop = pos + self._size + AEAD_TAG_SIZE
            if end < stop:
                break
            self.wire_used += stop - pos
            out.append(sealer.open(view[pos:stop]))
            pos, self._size = stop, None
        return pos

    def _read_length(self, plain: bytes) -> Optional[int]:
        (size,) = _LENGTH.unpack(plain)
        if size == 0:
            self.eof = True  # auth.go readInternal: a zero-length chunk ends the stream
            return None
        if size > MAX_CHUNK_PAYLOAD:
            raise RemoteProtocolError(f"shadowsocks: chunk of {size} bytes exceeds "
                                      f"{MAX_CHUNK_PAYLOAD}")
        return size


class StreamWriter:
    """One TCP direction out: the salt goes in front of the first bytes written."""

    def __init__(self, account: Account, salt: Optional[bytes] = None):
        method = account.method
        self._head = b""
        self._sealer: Optional[_Sealer] = None
        if method.is_aead:
            self._head = salt if salt is not None else os.urandom(method.salt_size)
            if len(self._head) != method.salt_size:
                raise LocalProtocolError(f"shadowsocks: salt must be {method.salt_size} bytes")
            self._sealer = _Sealer(account.cipher(self._head))

    def encode(self, data: bytes) -> bytes:
        """Wire bytes for ``data``; nothing for nothing (an empty chunk would end the
        stream at a 4.34 reader)."""
        return b"".join(self.encode_parts([data]))

    def encode_parts(self, blocks: Sequence[bytes]) -> List[bytes]:
        """Wire bytes for ``blocks`` in order, as pieces for one gathered write: a relay
        hands them to ``sendmsg`` instead of joining a megabyte first. Each block is cut
        into chunks on its own (slices of a memoryview, no copies)."""
        out: List[bytes] = []
        if not any(blocks):
            return out
        if self._head:
            out.append(self._head)
            self._head = b""
        sealer = self._sealer
        if sealer is None:
            out.extend(bytes(block) for block in blocks if block)
            return out
        for block in blocks:
            with memoryview(block) as view:
                for i in range(0, len(view), WRITE_CHUNK_PAYLOAD):
                    piece = view[i:i + WRITE_CHUNK_PAYLOAD]
                    out.append(sealer.seal(_LENGTH.pack(len(piece))))
                    out.append(sealer.seal(piece))
        return out


def read_target(plain: bytes) -> Optional[Tuple[Address, int, int]]:
    """The SOCKS-style target at the start of ``plain``: ``(address, port, used)``, None
    while incomplete; garbage raises ``RemoteProtocolError``."""
    if not plain:
        return None
    masked = bytes([plain[0] & ATYP_MASK]) + bytes(plain[1:])
    cur = Cursor(masked)
    try:
        address, port = SOCKS.read(cur)
    except NeedMore:
        return None
    return address, port, cur.pos


class RequestDecoder:
    """The server's side of a TCP request: ``feed`` until the target is known.

    ``feed`` returns None while the target is incomplete, else ``(address, port, rest)``
    with ``rest`` the plaintext that followed it; after that, ``reader`` goes on with the
    body. A wrong key raises ``AuthenticationError``, a bad target ``RemoteProtocolError``.
    """

    MAX_TARGET = 1 + 1 + 255 + 2  # atyp, domain length, domain, port

    def __init__(self, account: Account):
        self.reader = StreamReader(account)
        self._plain = b""

    def feed(self, data: bytes) -> Optional[Tuple[Address, int, bytes]]:
        self._plain += b"".join(self.reader.feed(data))
        parsed = read_target(self._plain)
        if parsed is None:
            if self.reader.failure is not None:
                raise self.reader.failure  # a wrong key, or a target that did not open
            if self.reader.eof:
                raise RemoteProtocolError("shadowsocks: stream ended inside the target address")
            return None
        address, port, used = parsed
        return address, port, self._plain[used:]

    @property
    def plain_used(self) -> int:
        """Target bytes read before a failure (4.34 subtracts them from its drain)."""
        return min(len(self._plain), self.MAX_TARGET)


def encode_request(account: Account, address: Address, port: int, payload: bytes = b"",
                   salt: Optional[bytes] = None) -> Tuple[StreamWriter, bytes]:
    """A client's writer and its first wire bytes: salt, the target, then ``payload``."""
    writer = StreamWriter(account, salt)
    return writer, writer.encode(SOCKS.encode(address, port) + payload)


def encode_packet(account: Account, address: Address, port: int, payload: bytes,
                  salt: Optional[bytes] = None) -> bytes:
    """One datagram (``EncodeUDPPacket``); ``LocalProtocolError`` when it would exceed
    ``MAX_DATAGRAM`` (4.34's encoder would overrun its buffer)."""
    method = account.method
    plain = SOCKS.encode(address, port) + payload
    if not method.is_aead:
        wire = plain
    else:
        salt = salt if salt is not None else os.urandom(method.salt_size)
        wire = salt + account.cipher(salt).seal(bytes(NONCE_SIZE), plain)
    if len(wire) > MAX_DATAGRAM:
        raise LocalProtocolError(f"shadowsocks: datagram of {len(wire)} bytes exceeds "
                                 f"{MAX_DATAGRAM}")
    return wire


def decode_packet(account: Account, datagram: bytes) -> Tuple[Address, int, bytes]:
    """``(address, port, payload)`` of one datagram (``DecodeUDPPacket``)."""
    if len(datagram) > MAX_DATAGRAM:
        raise RemoteProtocolError(f"shadowsocks: datagram of {len(datagram)} bytes exceeds "
                                  f"{MAX_DATAGRAM}")
    method = account.method
    plain = datagram
    if method.is_aead:
        if len(datagram) <= method.salt_size:
            raise RemoteProtocolError(f"shadowsocks: datagram of {len(datagram)} bytes is "
                                      "too short")
        salt = datagram[:method.salt_size]
        plain = account.cipher(salt).open(bytes(NONCE_SIZE), datagram[method.salt_size:])
    parsed = read_target(plain)
    if parsed is None:
        raise RemoteProtocolError("shadowsocks: datagram ends inside its address")
    address, port, used = parsed
    return address, port, plain[used:]
