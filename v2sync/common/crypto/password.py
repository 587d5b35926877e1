"""Shadowsocks key derivation (v2ray ``proxy/shadowsocks/config.go``; SIP004).

* ``evp_bytes_to_key``: the master key from a password, OpenSSL's ``EVP_BytesToKey`` with
  MD5, no salt and one round (``passwordToCipherKey``): ``D1 = MD5(pw)``,
  ``Di = MD5(D(i-1) || pw)``, concatenated and cut to the key size.
* ``hkdf_sha1``: RFC 5869 HKDF with SHA-1; Shadowsocks AEAD derives each direction's
  subkey as ``HKDF-SHA1(ikm=master key, salt=the salt on the wire, info="ss-subkey")``.
"""
from __future__ import annotations

import hashlib
import hmac

SS_SUBKEY_INFO = b"ss-subkey"
_SHA1_SIZE = 20
_MAX_HKDF_BLOCKS = 255  # RFC 5869 §2.3: L <= 255 * HashLen


def evp_bytes_to_key(password: bytes, key_size: int) -> bytes:
    """``key_size`` bytes of OpenSSL ``EVP_BytesToKey(md5, salt=None, count=1)``."""
    blocks = [hashlib.md5(password).digest()]
    while len(blocks) * len(blocks[0]) < key_size:
        blocks.append(hashlib.md5(blocks[-1] + password).digest())
    return b"".join(blocks)[:key_size]


def hkdf_sha1(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 extract-then-expand with HMAC-SHA1 (``hmac.digest`` is OpenSSL's one-shot
    HMAC: a connection derives one subkey per direction, so this runs twice per connection
    and once per datagram)."""
    if not 0 <= length <= _MAX_HKDF_BLOCKS * _SHA1_SIZE:
        raise ValueError(f"HKDF-SHA1 output of {length} bytes is out of range")
    prk = hmac.digest(salt or bytes(_SHA1_SIZE), ikm, "sha1")
    out, block = b"", b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha1")
        out += block
        counter += 1
    return out[:length]


def ss_subkey(master_key: bytes, salt: bytes) -> bytes:
    """The per-salt AEAD key: as long as the master key (``AEADCipher.createAuthenticator``)."""
    return hkdf_sha1(master_key, salt, SS_SUBKEY_INFO, len(master_key))
