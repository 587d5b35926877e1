"""Body chunk readers and writers for every security, option set and transfer type."""
from __future__ import annotations

import hashlib
import struct
from typing import List

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from v2sync.common.crypto.checksum import fnv1a32
from v2sync.common.crypto.stream import aes_cfb_decryptor
from v2sync.common.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from v2sync.proxy.vmess.body import (
    BUFFER_SIZE, MAX_PADDING, SIZE_BYTES, STREAM_CHUNK_PAYLOAD, AeadAuth, ChunkReader, ChunkStreamReader, RawReader, SizeCodec, chacha20_poly1305_key,
    new_body_reader, new_body_writer)
from v2sync.common.crypto.aead import aes_gcm
from v2sync.proxy.vmess.ids import Security

KEY, IV = bytes(range(100, 116)), bytes(range(200, 216))
TRAILER = b"\x00after-eos\xff"
SECURITIES = [Security.AES128_GCM, Security.CHACHA20_POLY1305, Security.NONE, Security.LEGACY]
OPTIONS = [0x00, 0x01, 0x05, 0x0D]
U16 = struct.Struct("!H")


def pair(security: Security, option: int, packet: bool = False):
    return (new_body_writer(security, option, packet, KEY, IV),
            new_body_reader(security, option, packet, KEY, IV))


def has_eos(security: Security, option: int) -> bool:
    return option & 0x01 or security in (Security.AES128_GCM, Security.CHACHA20_POLY1305)


def read_bytewise(reader, wire: bytes) -> List[bytes]:
    out: List[bytes] = []
    for i in range(len(wire)):
        out += reader.feed(wire[i:i + 1])
    return out


@pytest.mark.parametrize("security", SECURITIES)
@pytest.mark.parametrize("option", OPTIONS)
def test_stream_round_trip_whole_bytewise_and_trailing(security: Security, option: int) -> None:
    data = bytes(i % 251 for i in range(5000))
    writer, reader = pair(security, option)
    wire = writer.encode(data[:1]) + writer.encode(data[1:]) + writer.encode_eof()
    if has_eos(security, option):
        chunks = reader.feed(wire + TRAILER)
        assert all(type(c) is bytes for c in chunks)
        assert b"".join(chunks) == data
        assert reader.eof and reader.unused == TRAILER
        assert reader.feed(b"more") == [] and reader.unused == TRAILER + b"more"
    else:  # a raw body has no end marker: everything is data until the connection closes
        assert b"".join(reader.feed(wire)) == data and not reader.eof
    _, slow = pair(security, option)
    small = data[:300]
    writer2, _ = pair(security, option)
    wire2 = writer2.encode(small) + writer2.encode_eof()
    assert b"".join(read_bytewise(slow, wire2)) == small
    assert slow.eof == bool(has_eos(security, option))


@pytest.mark.parametrize("security", SECURITIES)
@pytest.mark.parametrize("option", [0x01, 0x05, 0x0D])
def test_packet_mode_keeps_datagram_boundaries(security: Security, option: int) -> None:
    writer, reader = pair(security, option, packet=True)
    datagrams = [b"a", b"b" * 500, bytes(range(256)) * 7]
    wire = b"".join(writer.encode(d) for d in datagrams) + writer.encode_eof()
    if isinstance(reader, ChunkReader):
        got = reader.feed(wire)
        assert got == datagrams and reader.eof
        assert all(type(d) is bytes for d in got)  # not views of the reader's buffer
    else:  # NONE without ChunkStream has no framing at all
        assert b"".join(reader.feed(wire)) == b"".join(datagrams)


@pytest.mark.parametrize("security,option,limit", [
    (Security.AES128_GCM, 0x0D, STREAM_CHUNK_PAYLOAD), (Security.AES128_GCM, 0x05, STREAM_CHUNK_PAYLOAD),
    (Security.CHACHA20_POLY1305, 0x0D, STREAM_CHUNK_PAYLOAD), (Security.LEGACY, 0x01, STREAM_CHUNK_PAYLOAD),
    (Security.NONE, 0x05, 8192)])
def test_stream_writers_split_at_their_chunk_size(security: Security, option: int, limit: int) -> None:
    # 4.34 writes at most 2048-byte chunks but reads any 16-bit size; ours are larger (body.py).
    writer, reader = pair(security, option)
    chunks = reader.feed(writer.encode(b"z" * (2 * limit + 1)))
    assert [len(c) for c in chunks] == [limit, limit, 1]  # one reader item per wire chunk
    assert limit + 16 + 64 + 2 <= 0xFFFF  # a chunk's size field still fits in 16 bits


@pytest.mark.parametrize("security", [Security.AES128_GCM, Security.CHACHA20_POLY1305])
@pytest.mark.parametrize("option", [0x05, 0x0D])
def test_many_chunks_in_one_feed_cross_mask_batches_and_nonce_counts(security: Security,
                                                                     option: int) -> None:
    # 400 chunks: past a SHAKE batch (256 draws; two a chunk with padding, which the
    # reader takes as a pair, one without) whichever way they arrive. All in one feed,
    # they are opened in one loop.
    writer, reader = pair(security, option, packet=True)
    datagrams = [bytes([i % 251]) * (1 + i % 37) for i in range(400)]
    wire = b"".join(writer.encode(d) for d in datagrams)
    assert reader.feed(wire) == datagrams
    writer, slow = pair(security, option, packet=True)
    wire = b"".join(writer.encode(d) for d in datagrams)
    assert read_bytewise(slow, wire) == datagrams


def _feed_checked(reader: ChunkReader, wire: bytes) -> List[bytes]:
    chunks = reader.feed(wire)
    reader.check()
    return chunks


@pytest.mark.parametrize("security", [Security.AES128_GCM, Security.LEGACY])
def test_a_tampered_chunk_among_many_hands_on_those_before_it(security: Security) -> None:
    """A bad chunk ends the stream, but the good ones read with it are not lost."""
    writer, reader = pair(security, 0x05, packet=True)  # no padding: the tag ends it
    wire = bytearray(b"".join(writer.encode(b"d%d" % i) for i in range(5)))
    wire[-3] ^= 1  # in the last chunk's tag (the FNV checksum comes first: its data)
    assert reader.feed(bytes(wire)) == [b"d0", b"d1", b"d2", b"d3"]
    with pytest.raises(AuthenticationError):
        reader.check()
    with pytest.raises(AuthenticationError):  # nothing is read past it
        reader.feed(writer.encode(b"d5"))


def test_a_bad_length_after_good_chunks_hands_them_on() -> None:
    writer, reader = pair(Security.AES128_GCM, 0x01)
    wire = writer.encode(b"good") + U16.pack(5)  # 5: shorter than a tag
    assert reader.feed(wire) == [b"good"]
    with pytest.raises(RemoteProtocolError, match="shorter"):
        reader.check()


def test_a_datagram_goes_when_its_own_padding_fits_as_in_4_34() -> None:
    """4.34's seal: 2 + len + 16 + this chunk's padding <= 2048. The first padding drawn
    from IV's stream is known, so sizes on either side of the limit show the rule."""
    pad = U16.unpack(hashlib.shake_128(IV).digest(2))[0] % 64
    limit = 2048 - 2 - 16 - pad  # the largest datagram the first chunk carries
    writer, reader = pair(Security.AES128_GCM, 0x0D, packet=True)
    assert writer.encode(b"x" * (limit + 1)) == b"" and writer.dropped == 1  # nothing drawn
    wire = writer.encode(b"x" * limit) + writer.encode(b"ok")
    assert reader.feed(wire) == [b"x" * limit, b"ok"]  # the streams stayed in step
    assert limit > 1966  # above the old worst-case limit: 4.34 sends these


def test_an_oversized_datagram_is_dropped_without_desyncing() -> None:
    writer, reader = pair(Security.AES128_GCM, 0x0D, packet=True)
    assert writer.encode(b"x" * 2031) == b""  # too large whatever the padding
    assert reader.feed(writer.encode(b"x" * 1966) + writer.encode(b"ok")) == [b"x" * 1966, b"ok"]


def test_gcm_wire_layout_padding_is_drawn_before_the_mask() -> None:
    writer = new_body_writer(Security.AES128_GCM, 0x0D, False, KEY, IV)
    wire = writer.encode(b"hello")
    shake = hashlib.shake_128(IV).digest(4)
    padding = U16.unpack(shake[:2])[0] % 64
    mask = U16.unpack(shake[2:4])[0]
    size = len(b"hello") + 16 + padding
    assert U16.unpack(wire[:2])[0] == size ^ mask and len(wire) == 2 + size
    nonce = b"\x00\x00" + IV[2:12]
    assert AESGCM(KEY).decrypt(nonce, wire[2:2 + 21], None) == b"hello"


def test_chacha_key_and_nonce_counter() -> None:
    assert chacha20_poly1305_key(KEY) == hashlib.md5(KEY).digest() + hashlib.md5(
        hashlib.md5(KEY).digest()).digest()
    writer = new_body_writer(Security.CHACHA20_POLY1305, 0x01, False, KEY, IV)
    writer.encode(b"first")
    wire = writer.encode(b"second")
    nonce = b"\x00\x01" + IV[2:12]  # second chunk: count 1
    assert U16.unpack(wire[:2])[0] == 6 + 16
    assert ChaCha20Poly1305(chacha20_poly1305_key(KEY)).decrypt(nonce, wire[2:], None) == b"second"


def test_nonce_counter_wraps_at_16_bits_like_go() -> None:
    auth = AeadAuth(aes_gcm(KEY), IV)
    first = auth.seal(b"")
    for _ in range(0xFFFF):
        auth.seal(b"")
    assert auth.seal(b"") == first  # count 65536 reuses nonce 0, as Go's uint16 does


def test_none_stream_wire_and_eos() -> None:
    writer = new_body_writer(Security.NONE, 0x05, False, KEY, IV)
    wire = writer.encode(b"abc") + writer.encode_eof()
    masks = hashlib.shake_128(IV).digest(4)
    assert U16.unpack(wire[:2])[0] ^ U16.unpack(masks[:2])[0] == 3 and wire[2:5] == b"abc"
    assert U16.unpack(wire[5:7])[0] ^ U16.unpack(masks[2:])[0] == 0 and len(wire) == 7


def test_legacy_wire_is_cfb_of_length_fnv_data() -> None:
    writer = new_body_writer(Security.LEGACY, 0x01, False, KEY, IV)
    plain = aes_cfb_decryptor(KEY, IV).update(writer.encode(b"data") + writer.encode_eof())
    assert plain == b"\x00\x08" + struct.pack("!I", fnv1a32(b"data")) + b"data" + \
        b"\x00\x04" + struct.pack("!I", fnv1a32(b""))


def test_none_stream_delivers_partial_chunks() -> None:
    reader = ChunkStreamReader(SizeCodec(None))
    assert reader.feed(b"\x00\x05ab") == [b"ab"]
    assert reader.feed(b"cde\x00") == [b"cde"]
    assert reader.feed(b"\x00rest") == [] and reader.eof and reader.unused == b"rest"


@pytest.mark.parametrize("security", [Security.AES128_GCM, Security.CHACHA20_POLY1305,
                                      Security.LEGACY])
def test_tampered_chunk_is_rejected(security: Security) -> None:
    writer, reader = pair(security, 0x01)
    wire = bytearray(writer.encode(b"payload bytes"))
    wire[6] ^= 0x01
    with pytest.raises(AuthenticationError):
        _feed_checked(reader, bytes(wire))


def test_length_limits() -> None:
    reader = ChunkReader(AeadAuth(aes_gcm(KEY), IV), SizeCodec(None), max_chunk_size=2048)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        _feed_checked(reader, U16.pack(4000))
    short = ChunkReader(AeadAuth(aes_gcm(KEY), IV), SizeCodec(None))
    with pytest.raises(RemoteProtocolError, match="shorter"):
        _feed_checked(short, U16.pack(5))
    stream = ChunkStreamReader(SizeCodec(None), max_chunk_size=100)
    assert stream.feed(U16.pack(3) + b"abc" + U16.pack(101)) == [b"abc"]  # then the bad one
    with pytest.raises(RemoteProtocolError):
        stream.check()


def test_readers_accept_chunks_up_to_65535() -> None:
    auth = AeadAuth(aes_gcm(KEY), IV)
    big = b"B" * (0xFFFF - 16)
    wire = U16.pack(0xFFFF) + auth.seal(big)
    assert ChunkReader(AeadAuth(aes_gcm(KEY), IV), SizeCodec(None)).feed(wire) == [big]


def test_global_padding_without_masking_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        new_body_writer(Security.AES128_GCM, 0x09, False, KEY, IV)
    with pytest.raises(RemoteProtocolError):
        new_body_reader(Security.AES128_GCM, 0x09, False, KEY, IV)


def test_raw_reader_and_empty_writes() -> None:
    assert RawReader().feed(b"") == [] and RawReader().feed(b"x") == [b"x"]
    writer, _ = pair(Security.AES128_GCM, 0x0D)
    assert writer.encode(b"") == b""  # only encode_eof() ends the stream


@pytest.mark.parametrize("security", [Security.AES128_GCM, Security.CHACHA20_POLY1305])
@pytest.mark.parametrize("option", [0x05, 0x0D])
def test_runs_of_small_chunks_read_the_same_under_any_cuts(security: Security, option: int) -> None:
    """4.34 sends ~2 KiB chunks; the masked-length fast path must read them whole, one byte
    at a time and cut anywhere, to the same bytes."""
    import random
    rng = random.Random(option)
    data = rng.randbytes(40_000)
    writer = new_body_writer(security, option, False, KEY, IV)
    # 4.34's chunk size (writeStream: room for the largest padding), not our 63 KiB
    writer.stream_payload = BUFFER_SIZE - 16 - SIZE_BYTES - (MAX_PADDING if option & 0x08 else 0)
    wire = writer.encode(data) + writer.encode_eof() + TRAILER
    for cuts in (None, 1, "random"):
        reader = new_body_reader(security, option, False, KEY, IV)
        if cuts is None:
            got = reader.feed(wire)
        else:
            got, pos = [], 0
            while pos < len(wire):
                step = 1 if cuts == 1 else rng.randint(1, 5000)
                got += reader.feed(wire[pos:pos + step])
                pos += step
        assert b"".join(got) == data, cuts
        assert reader.eof and reader.unused == TRAILER


@pytest.mark.parametrize("option", [0x05, 0x0D])
def test_masked_length_limits(option: int) -> None:
    for size, message in ((4000, "exceeds"), (5, "shorter")):
        masked = SizeCodec(IV)
        if option & 0x08:
            masked.next_padding()
        wire = U16.pack(size ^ masked._shake.next_u16())  # the first chunk's length, masked
        reader = ChunkReader(AeadAuth(aes_gcm(KEY), IV), SizeCodec(IV), bool(option & 0x08),
                             max_chunk_size=2048)
        with pytest.raises(RemoteProtocolError, match=message):
            _feed_checked(reader, wire)
