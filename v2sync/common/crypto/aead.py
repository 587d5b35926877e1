"""AEAD ciphers for chunk streams (v2ray ``common/crypto/aes.go``, ``chacha20.go``).

One ``AEADCipher`` is built per key and reused for every chunk of a direction: building a
cipher object costs far more than sealing a 2 KiB chunk.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from v2sync.common.errors import AuthenticationError

AEAD_NONCE_SIZE = 12
AEAD_TAG_SIZE = 16


class AEADCipher:
    """Seal/open with a fixed key; ``open`` raises ``AuthenticationError`` on a bad tag."""

    __slots__ = ("_impl", "name")
    nonce_size = AEAD_NONCE_SIZE
    overhead = AEAD_TAG_SIZE

    def __init__(self, impl: Union[AESGCM, ChaCha20Poly1305], name: str):
        self._impl = impl
        self.name = name

    def seal(self, nonce: bytes, plaintext: bytes, aad: Optional[bytes] = None) -> bytes:
        """``ciphertext || tag``."""
        return self._impl.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: Optional[bytes] = None) -> bytes:
        try:
            return self._impl.decrypt(nonce, ciphertext, aad)
        except InvalidTag as e:
            raise self.failed() from e

    def open_each(self, nonces: Iterable[bytes], sealed: Iterable[bytes]) -> List[bytes]:
        """``open`` of each (nonce, ciphertext) pair, no AAD, in one loop: a chunk stream
        opens ~512 of these per MiB, and two Python calls less per chunk showed."""
        decrypt = self._impl.decrypt
        try:
            return [decrypt(nonce, data, None) for nonce, data in zip(nonces, sealed)]
        except InvalidTag as e:
            raise self.failed() from e

    def failed(self) -> AuthenticationError:
        return AuthenticationError(f"{self.name}: message authentication failed")


def aes_gcm(key: bytes) -> AEADCipher:
    """AES-GCM with a 16-byte (AES-128) or 32-byte key, 12-byte nonce, 16-byte tag."""
    return AEADCipher(AESGCM(key), "aes-gcm")


def chacha20_poly1305(key: bytes) -> AEADCipher:
    """ChaCha20-Poly1305 (RFC 8439) with a 32-byte key."""
    return AEADCipher(ChaCha20Poly1305(key), "chacha20-poly1305")
