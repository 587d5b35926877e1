"""Cryptographic primitives shared by the protocol codecs (v2ray ``common/crypto``).

Each module wraps one primitive behind a small object so the codecs never touch a crypto
library directly:

* ``aead``     AES-128-GCM and ChaCha20-Poly1305, one object per key, reused for every chunk.
* ``stream``   AES-CFB streams (the legacy VMess cipher) and a raw AES-ECB block helper.
* ``shake``    a SHAKE128 XOF read as a stream (VMess chunk-length masking).
* ``kdf``      the VMess AEAD KDF (nested HMAC-SHA256).
* ``checksum`` FNV-1a-32, CRC32 (IEEE) and CRC64 (ECMA, as Go's ``hash/crc64``).

Failures of the underlying libraries (``InvalidTag``) become ``AuthenticationError`` here,
once, so callers handle only the v2sync exception tree.
"""
