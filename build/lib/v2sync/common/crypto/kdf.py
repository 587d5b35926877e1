"""The VMess AEAD key derivation function (v2ray ``proxy/vmess/aead/kdf.go``).

``KDF(key, p1, ..., pn)`` is a tower of HMACs. Level 0 is HMAC-SHA256 keyed with
``"VMess AEAD KDF"``; level i is HMAC keyed with ``pi`` whose hash function is level i-1
(block size 64, output 32). The result is level n applied to ``key``, so the *last* path
element is the outermost HMAC key.

Tag v4.34 builds this by handing the same Go hash object to ``hmac.New`` as both inner and
outer hash; under Go 1.15 that equals the properly nested HMAC computed here (the published
vector ``53e9d7e1...8892`` from v4.35's ``kdf_test.go`` is checked in the tests).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
from typing import Callable, Tuple

KDF_ROOT_KEY = b"VMess AEAD KDF"
_HMAC_BLOCK_SIZE = 64  # SHA-256's block size; each level inherits it
# XOR with the HMAC pad bytes as translation tables: one C call per pad instead of a
# Python loop over 64 bytes (every connection derives a dozen keys).
_XOR_IPAD = bytes(b ^ 0x36 for b in range(256))
_XOR_OPAD = bytes(b ^ 0x5C for b in range(256))

_Hash = Callable[[bytes], bytes]


def _pads(key: bytes) -> Tuple[bytes, bytes]:
    key = key.ljust(_HMAC_BLOCK_SIZE, b"\0")
    return key.translate(_XOR_IPAD), key.translate(_XOR_OPAD)


def _root(message: bytes) -> bytes:
    return hmac.digest(KDF_ROOT_KEY, message, "sha256")  # OpenSSL's one-shot HMAC


# Level 0 is HMAC-SHA256 under a constant key, so SHA-256 states that have already absorbed
# its pads are built once; each use copies one (cheaper than re-hashing a 64-byte pad).
_ROOT_IPAD, _ROOT_OPAD = _pads(KDF_ROOT_KEY)
_ROOT_OUTER = hashlib.sha256(_ROOT_OPAD)


def _finish(state: "hashlib._Hash", message: bytes) -> bytes:
    state = state.copy()
    state.update(message)
    return state.digest()


@functools.lru_cache(maxsize=32)  # the path's first element is one of a few salt constants
def _first_level(salt: bytes) -> _Hash:
    """Level 1 (HMAC keyed with a salt, over level 0) with its constant prefixes absorbed.

    level1(m) = root(opad1 || root(ipad1 || m)), and root(x) = SHA(opad0 || SHA(ipad0 || x)),
    so ``SHA(ipad0 || ipad1 || ...)`` and ``SHA(ipad0 || opad1 || ...)`` start from states
    computed here: four SHA-256 finishes per call instead of four full HMACs.
    """
    if len(salt) > _HMAC_BLOCK_SIZE:
        salt = _root(salt)
    ipad, opad = _pads(salt)
    inner = hashlib.sha256(_ROOT_IPAD + ipad)
    outer = hashlib.sha256(_ROOT_IPAD + opad)

    def level1(message: bytes) -> bytes:
        first = _finish(_ROOT_OUTER, _finish(inner, message))
        return _finish(_ROOT_OUTER, _finish(outer, first))
    return level1


def _hmac_over(hash_fn: _Hash, key: bytes) -> _Hash:
    """HMAC (RFC 2104) keyed with ``key`` using ``hash_fn`` as the hash function."""
    if len(key) > _HMAC_BLOCK_SIZE:
        key = hash_fn(key)
    inner_pad, outer_pad = _pads(key)
    return lambda message: hash_fn(outer_pad + hash_fn(inner_pad + message))


def vmess_kdf(key: bytes, *path: bytes) -> bytes:
    """32 bytes: the nested HMAC of ``key`` under ``path`` (see module docstring)."""
    if not path:
        return _root(key)
    fn = _first_level(bytes(path[0]))  # hashable for the cache, whatever buffer came in
    for element in path[1:]:
        fn = _hmac_over(fn, element)
    return fn(key)


def vmess_kdf16(key: bytes, *path: bytes) -> bytes:
    """The first 16 bytes of ``vmess_kdf`` (AES-128 keys)."""
    return vmess_kdf(key, *path)[:16]
