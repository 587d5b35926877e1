"""AES stream and block helpers (v2ray ``common/crypto/aes.go``).

Go's ``cipher.NewCFBEncrypter`` is full-block CFB (CFB-128); so is ``cryptography``'s
``CFB`` mode, which lives in ``hazmat.decrepit`` since cryptography 48 (the old import warns).
Note that pycryptodome's ``MODE_CFB`` defaults to CFB-8, which would not interoperate.
"""
from __future__ import annotations

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

AES_BLOCK_SIZE = 16


class AesCfb:
    """One direction of an AES-CFB stream: ``update`` may be called with any lengths."""

    __slots__ = ("_ctx",)

    def __init__(self, key: bytes, iv: bytes, encrypt: bool):
        cipher = Cipher(algorithms.AES(key), CFB(iv))
        self._ctx = cipher.encryptor() if encrypt else cipher.decryptor()

    def update(self, data: bytes) -> bytes:
        return self._ctx.update(data)


def aes_cfb_encryptor(key: bytes, iv: bytes) -> AesCfb:
    return AesCfb(key, iv, encrypt=True)


def aes_cfb_decryptor(key: bytes, iv: bytes) -> AesCfb:
    return AesCfb(key, iv, encrypt=False)


class AesBlock:
    """Raw AES on single 16-byte blocks (ECB), for the VMess AuthID.

    The two contexts are built once and reused; ECB keeps no state between blocks, but a
    ``cryptography`` context is not safe for concurrent use, so callers serialise access.
    """

    __slots__ = ("encrypt_block", "decrypt_block")

    def __init__(self, key: bytes):
        cipher = Cipher(algorithms.AES(key), modes.ECB())
        self.encrypt_block = cipher.encryptor().update
        self.decrypt_block = cipher.decryptor().update
