"""common/crypto primitives as VMess uses them, checked against published values."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from v2sync.common.crypto.aead import aes_gcm, chacha20_poly1305
from v2sync.common.crypto.checksum import crc32_ieee, crc64_ecma, fnv1a32
from v2sync.common.crypto.kdf import vmess_kdf, vmess_kdf16
from v2sync.common.crypto.shake import SHAKE_BATCH, ShakeStream
from v2sync.common.crypto.stream import AesBlock, aes_cfb_decryptor, aes_cfb_encryptor
from v2sync.common.errors import AuthenticationError

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def test_kdf_matches_the_published_vector() -> None:
    vector = json.loads((VECTORS / "vmess_kdf.json").read_text())
    path = [p.encode() for p in vector["path"]]
    assert vmess_kdf(vector["key"].encode(), *path).hex() == vector["expected_hex"]
    assert vmess_kdf16(vector["key"].encode(), *path).hex() == vector["expected_hex"][:32]


def test_kdf_without_path_is_plain_hmac_and_path_order_matters() -> None:
    import hmac
    assert vmess_kdf(b"k") == hmac.new(b"VMess AEAD KDF", b"k", hashlib.sha256).digest()
    assert vmess_kdf(b"k", b"a", b"b") != vmess_kdf(b"k", b"b", b"a")
    long_path = b"x" * 100  # longer than the block: hashed first, as RFC 2104 says
    assert len(vmess_kdf(b"k", long_path)) == 32


def _textbook_kdf(key: bytes, *path: bytes) -> bytes:
    """RFC 2104 applied level by level, written for clarity rather than speed."""
    def hmac_with(hash_fn, hmac_key):
        if len(hmac_key) > 64:
            hmac_key = hash_fn(hmac_key)
        hmac_key = hmac_key.ljust(64, b"\0")
        ipad = bytes(b ^ 0x36 for b in hmac_key)
        opad = bytes(b ^ 0x5C for b in hmac_key)
        return lambda m: hash_fn(opad + hash_fn(ipad + m))

    fn = hmac_with(lambda m: hashlib.sha256(m).digest(), b"VMess AEAD KDF")
    for element in path:
        fn = hmac_with(fn, element)
    return fn(key)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=80),
       st.lists(st.binary(max_size=90), max_size=4))
@example(b"k", [b"s" * 65])  # a first salt longer than a block is hashed first
@example(b"k", [b"VMess Header AEAD Key", b"a" * 16, b"n" * 100])
@example(b"", [])
def test_kdf_equals_the_textbook_nested_hmac(key: bytes, path: list) -> None:
    # The fast path precomputes SHA-256 states for level 1; salts longer than a block,
    # empty paths and deep paths must all agree with the plain construction.
    assert vmess_kdf(key, *path) == _textbook_kdf(key, *path)


def test_checksums_known_values() -> None:
    assert crc64_ecma(b"123456789") == 0x995DC9BBDF1939FA  # CRC-64/XZ check value
    assert crc64_ecma(b"6789", crc64_ecma(b"12345")) == 0x995DC9BBDF1939FA  # Update chains
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968
    assert crc32_ieee(b"123456789") == 0xCBF43926


@pytest.mark.parametrize("factory,key", [(aes_gcm, b"k" * 16), (chacha20_poly1305, b"k" * 32)])
def test_aead_round_trip_and_tamper(factory, key) -> None:
    cipher = factory(key)
    sealed = cipher.seal(b"n" * 12, b"payload", b"aad")
    assert len(sealed) == len(b"payload") + 16
    assert cipher.open(b"n" * 12, sealed, b"aad") == b"payload"
    for broken in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:5], b""):
        with pytest.raises(AuthenticationError):
            cipher.open(b"n" * 12, broken, b"aad")
    with pytest.raises(AuthenticationError):
        cipher.open(b"n" * 12, sealed, b"other aad")


def test_cfb_is_full_block_and_splits_anywhere() -> None:
    key, iv = b"K" * 16, b"I" * 16
    data = bytes(range(200))
    whole = aes_cfb_encryptor(key, iv).update(data)
    enc = aes_cfb_encryptor(key, iv)
    pieces = b"".join(enc.update(data[i:i + 7]) for i in range(0, len(data), 7))
    assert pieces == whole
    # CFB-128: the first block is the plaintext XOR E(iv).
    first = AesBlock(key).encrypt_block(iv)
    assert whole[:16] == bytes(a ^ b for a, b in zip(data[:16], first))
    assert aes_cfb_decryptor(key, iv).update(whole) == data


def test_shake_stream_continues_across_batches() -> None:
    stream = ShakeStream(b"seed")
    draws = 3 * SHAKE_BATCH // 2 + 5  # across three batch boundaries
    got = b"".join(stream.next_u16().to_bytes(2, "big") for _ in range(draws))
    assert got == hashlib.shake_128(b"seed").digest(2 * draws)


def test_shake_stream_first_batch_opens_no_xof() -> None:
    """A short connection's draws come from hashlib's one-shot digest; the streaming XOF
    opens only when the first batch runs out, and goes on where it ended."""
    stream = ShakeStream(b"seed")
    first = [stream.next_u16() for _ in range(SHAKE_BATCH // 2)]
    assert stream._xof is None
    after = [stream.next_u16(), stream.next_u16()]
    assert stream._xof is not None
    assert struct.pack(f"!{len(first) + 2}H", *first, *after) == hashlib.shake_128(
        b"seed").digest(SHAKE_BATCH + 4)


def test_shake_pairs_are_two_draws_wherever_they_fall() -> None:
    single, paired = ShakeStream(b"seed"), ShakeStream(b"seed")
    single.next_u16()
    paired.next_u16()  # odd: a pair then straddles the batch boundary at some point
    expected = [single.next_u16() for _ in range(2 * SHAKE_BATCH)]
    got = [draw for _ in range(SHAKE_BATCH) for draw in paired.next_pair()]
    assert got == expected


def test_aes_block_round_trip() -> None:
    block = AesBlock(b"0123456789abcdef")
    assert block.decrypt_block(block.encrypt_block(b"A" * 16)) == b"A" * 16


def test_peek_leaves_the_draw_in_the_stream_across_batches() -> None:
    """``peek_u16`` shows the next draw and takes nothing, even at a batch boundary."""
    seed = b"peek seed"
    expected = hashlib.shake_128(seed).digest(4 * SHAKE_BATCH)
    stream = ShakeStream(seed)
    for i in range(2 * SHAKE_BATCH // 2 + 3):  # across the hashlib/pycryptodome boundary
        want = int.from_bytes(expected[2 * i:2 * i + 2], "big")
        assert stream.peek_u16() == want
        assert stream.next_u16() == want
