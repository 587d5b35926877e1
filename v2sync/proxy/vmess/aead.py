"""The VMess AEAD header: AuthID, sealed request header, sealed response header.

v2ray ``proxy/vmess/aead/{authid,encrypt,consts}.go`` and the AEAD branches of
``proxy/vmess/encoding/{client,server}.go``. Request layout::

    AuthID (16) | EncLen (2+16) | Nonce (8) | EncHdr (len+16)

``AuthID = AES-128-ECB(KDF16(cmdKey, "AES Auth ID Encryption"), t8 || rand4 || crc32(t8||rand4))``.
Both sealed parts are AES-128-GCM with ``AuthID`` as AAD and keys/nonces from
``KDF(cmdKey, salt, AuthID, Nonce)``. The response is ``EncLen | EncHdr`` keyed from the
response body key/IV, without AAD.
"""
from __future__ import annotations

import os
import struct
import threading
from typing import Callable, Optional, Tuple

from v2sync.common.crypto.aead import AEAD_NONCE_SIZE, AEAD_TAG_SIZE, AEADCipher, aes_gcm
from v2sync.common.crypto.checksum import crc32_ieee
from v2sync.common.crypto.kdf import vmess_kdf, vmess_kdf16
from v2sync.common.crypto.stream import AesBlock

AUTH_ID_SIZE = 16
CONNECTION_NONCE_SIZE = 8
SEALED_LENGTH_SIZE = 2 + AEAD_TAG_SIZE
AUTH_ID_MAX_SKEW = 120  # seconds either side of now (authid.go Match)
REQUEST_PREFIX_SIZE = AUTH_ID_SIZE + SEALED_LENGTH_SIZE + CONNECTION_NONCE_SIZE

SALT_HEADER_LENGTH_KEY = b"VMess Header AEAD Key_Length"
SALT_HEADER_LENGTH_NONCE = b"VMess Header AEAD Nonce_Length"
SALT_HEADER_KEY = b"VMess Header AEAD Key"
SALT_HEADER_NONCE = b"VMess Header AEAD Nonce"
SALT_RESP_LENGTH_KEY = b"AEAD Resp Header Len Key"
SALT_RESP_LENGTH_IV = b"AEAD Resp Header Len IV"
SALT_RESP_KEY = b"AEAD Resp Header Key"
SALT_RESP_IV = b"AEAD Resp Header IV"

_AUTH_ID_PLAIN = struct.Struct("!q4sI")  # int64 time, 4 random bytes, CRC32 of the first 12
_U16 = struct.Struct("!H")
_MAX_HEADER_LENGTH = 0xFFFF
# The response header's length cipher and nonce, then its header cipher and nonce.
ResponseCiphers = Tuple[AEADCipher, bytes, AEADCipher, bytes]

RandomBytes = Callable[[int], bytes]


def create_auth_id(block: AesBlock, now: int, random4: bytes) -> bytes:
    """The 16-byte AuthID for ``now`` (seconds), encrypted with the user's AuthID key."""
    head = struct.pack("!q", now) + random4
    return block.encrypt_block(head + struct.pack("!I", crc32_ieee(head)))


class AuthIdSealer:
    """One user's AuthID cipher, built once and shared by every connection to it: building
    an AES context cost ~5 µs, a tenth of a client's request header. A context is not safe
    for concurrent use, so a lock serialises the (16-byte) encryptions."""

    __slots__ = ("_block", "_lock")

    def __init__(self, key: bytes):
        self._block = AesBlock(key)
        self._lock = threading.Lock()

    def create(self, now: int, random4: bytes) -> bytes:
        with self._lock:
            return create_auth_id(self._block, now, random4)


def auth_id_time(block: AesBlock, auth_id: bytes) -> Optional[int]:
    """The timestamp inside ``auth_id`` if it decrypts with ``block`` and its CRC holds."""
    plain = block.decrypt_block(auth_id)
    t, _, crc = _AUTH_ID_PLAIN.unpack(plain)
    return t if crc == crc32_ieee(plain[:12]) else None


def _header_cipher(cmd_key: bytes, key_salt: bytes, nonce_salt: bytes, auth_id: bytes,
                   nonce: bytes):
    key = vmess_kdf16(cmd_key, key_salt, auth_id, nonce)
    iv = vmess_kdf(cmd_key, nonce_salt, auth_id, nonce)[:AEAD_NONCE_SIZE]
    return aes_gcm(key), iv


class RequestKeys:
    """What seals one request header: its AuthID (made in ``second``, which it carries),
    the connection nonce, and the length and header parts' ciphers with their nonces. Four
    KDFs, most of a client's work on a header (``SpareKeys`` makes them ahead)."""

    __slots__ = ("second", "auth_id", "nonce", "length", "header")

    def __init__(self, cmd_key: bytes, second: int, auth_id: bytes, nonce: bytes):
        self.second = second
        self.auth_id = auth_id
        self.nonce = nonce
        self.length = _header_cipher(cmd_key, SALT_HEADER_LENGTH_KEY, SALT_HEADER_LENGTH_NONCE,
                                     auth_id, nonce)
        self.header = _header_cipher(cmd_key, SALT_HEADER_KEY, SALT_HEADER_NONCE, auth_id,
                                     nonce)


class SpareKeys:
    """One user's request keys made ahead: a client derives the next connection's while
    this one waits for its answer, so the next header costs no KDF. A spare serves only
    within the second its AuthID names, so every AuthID still carries the time of its
    request, as 4.34's (aead/encrypt.go); it is handed out once (an AuthID used twice is a
    replay), under a lock, since a user's connections run in several threads."""

    __slots__ = ("_spare", "_lock")

    def __init__(self) -> None:
        self._spare: Optional[RequestKeys] = None
        self._lock = threading.Lock()

    def take(self, second: int) -> Optional[RequestKeys]:
        """The spare if it was made in ``second``, else None; either way the shelf empties."""
        with self._lock:
            spare, self._spare = self._spare, None
        return spare if spare is not None and spare.second == second else None

    def peek(self) -> Optional[RequestKeys]:
        """The spare, left in place (what it holds, for a look from outside)."""
        return self._spare

    def wanted(self, second: int) -> bool:
        """No spare for ``second`` yet (an older one is as good as none)."""
        spare = self._spare
        return spare is None or spare.second != second

    def stock(self, keys: RequestKeys) -> None:
        with self._lock:
            self._spare = keys


def seal_request_header(cmd_key: bytes, auth_id: bytes, plaintext: bytes,
                        random_bytes: RandomBytes = os.urandom) -> bytes:
    """``AuthID | EncLen | Nonce | EncHdr`` around the command-section ``plaintext``."""
    # The caller made the AuthID, so its second is not known here; only a shelved spare
    # (``SpareKeys``) is matched by it.
    keys = RequestKeys(cmd_key, 0, auth_id, random_bytes(CONNECTION_NONCE_SIZE))
    return seal_with_keys(keys, plaintext)


def seal_with_keys(keys: RequestKeys, plaintext: bytes) -> bytes:
    """``seal_request_header`` with keys already derived."""
    if len(plaintext) > _MAX_HEADER_LENGTH:
        raise ValueError("VMess header too long")
    (length_aead, length_iv), (header_aead, header_iv) = keys.length, keys.header
    sealed_length = length_aead.seal(length_iv, _U16.pack(len(plaintext)), keys.auth_id)
    sealed_header = header_aead.seal(header_iv, plaintext, keys.auth_id)
    return keys.auth_id + sealed_length + keys.nonce + sealed_header


def open_request_header(cmd_key: bytes, buf: bytes) -> Optional[Tuple[bytes, int]]:
    """Decrypt a sealed request header at the start of ``buf`` (AuthID included).

    Returns ``None`` while bytes are missing, else ``(plaintext, consumed)``. A bad tag
    raises ``AuthenticationError`` (from ``common.crypto``).
    """
    if len(buf) < REQUEST_PREFIX_SIZE:
        return None
    auth_id = bytes(buf[:AUTH_ID_SIZE])
    sealed_length = bytes(buf[AUTH_ID_SIZE:AUTH_ID_SIZE + SEALED_LENGTH_SIZE])
    nonce = bytes(buf[AUTH_ID_SIZE + SEALED_LENGTH_SIZE:REQUEST_PREFIX_SIZE])
    length_aead, length_iv = _header_cipher(
        cmd_key, SALT_HEADER_LENGTH_KEY, SALT_HEADER_LENGTH_NONCE, auth_id, nonce)
    (length,) = _U16.unpack(length_aead.open(length_iv, sealed_length, auth_id))
    end = REQUEST_PREFIX_SIZE + length + AEAD_TAG_SIZE
    if len(buf) < end:
        return None
    header_aead, header_iv = _header_cipher(
        cmd_key, SALT_HEADER_KEY, SALT_HEADER_NONCE, auth_id, nonce)
    plaintext = header_aead.open(header_iv, bytes(buf[REQUEST_PREFIX_SIZE:end]), auth_id)
    return plaintext, end


def response_ciphers(resp_key: bytes, resp_iv: bytes) -> ResponseCiphers:
    """The response header's ciphers and nonces: four KDFs, two AES-GCM keys. A client
    derives them while its request travels (``ClientSession.prepare_response``)."""
    length_aead = aes_gcm(vmess_kdf16(resp_key, SALT_RESP_LENGTH_KEY))
    length_iv = vmess_kdf(resp_iv, SALT_RESP_LENGTH_IV)[:AEAD_NONCE_SIZE]
    header_aead = aes_gcm(vmess_kdf16(resp_key, SALT_RESP_KEY))
    header_iv = vmess_kdf(resp_iv, SALT_RESP_IV)[:AEAD_NONCE_SIZE]
    return length_aead, length_iv, header_aead, header_iv


def seal_response_header(resp_key: bytes, resp_iv: bytes, plaintext: bytes) -> bytes:
    """``EncLen | EncHdr`` of a response-header plaintext (server.go EncodeResponseHeader)."""
    length_aead, length_iv, header_aead, header_iv = response_ciphers(resp_key, resp_iv)
    return (length_aead.seal(length_iv, _U16.pack(len(plaintext)))
            + header_aead.seal(header_iv, plaintext))


def open_response_header(resp_key: bytes, resp_iv: bytes, buf: bytes,
                         ciphers: Optional[ResponseCiphers] = None
                         ) -> Optional[Tuple[bytes, int]]:
    """Inverse of ``seal_response_header``: ``None`` or ``(plaintext, consumed)``.
    ``ciphers``: ``response_ciphers`` of the same key and IV, derived ahead."""
    if len(buf) < SEALED_LENGTH_SIZE:
        return None
    if ciphers is None:
        ciphers = response_ciphers(resp_key, resp_iv)
    length_aead, length_iv, header_aead, header_iv = ciphers
    (length,) = _U16.unpack(length_aead.open(length_iv, bytes(buf[:SEALED_LENGTH_SIZE])))
    end = SEALED_LENGTH_SIZE + length + AEAD_TAG_SIZE
    if len(buf) < end:
        return None
    return header_aead.open(header_iv, bytes(buf[SEALED_LENGTH_SIZE:end])), end
