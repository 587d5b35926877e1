"""Shadowsocks codec: known answers (RFC 5869, OpenSSL, bytes captured from v2ray 4.34), round
trips fed whole, byte by byte and with trailing bytes, garbage, and Hypothesis properties.
No sockets (the openssl CLI is run as a key-derivation peer)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.codec_checks import assert_decodes
from v2sync.common.crypto.password import evp_bytes_to_key, hkdf_sha1, ss_subkey
from v2sync.common.errors import (AuthenticationError, LocalProtocolError, ProtocolError,
                                  RemoteProtocolError)
from v2sync.common.net import Address
from v2sync.proxy.shadowsocks.encoding import (AES_128_GCM, MAX_DATAGRAM, METHODS, NONE,
                                               WRITE_CHUNK_PAYLOAD, Account, RequestDecoder,
                                               StreamReader, StreamWriter, decode_packet,
                                               encode_packet, encode_request, method_named,
                                               read_target)

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "vectors"
                      / "shadowsocks_v2ray_capture.json").read_text())
PASSWORD = VECTORS["password"]
METHOD_NAMES = ["aes-128-gcm", "aes-256-gcm", "chacha20-poly1305", "none"]
DOMAIN = Address.parse("example.com")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def account(method: str, password: str = PASSWORD) -> Account:
    return Account.from_password(METHODS[method], password)


# -- key derivation: published vectors ----------------------------------------------------------

def test_hkdf_sha1_rfc5869_test_case_4() -> None:
    v = VECTORS["published"]["hkdf_sha1_rfc5869_a4"]
    okm = hkdf_sha1(bytes.fromhex(v["ikm"]), bytes.fromhex(v["salt"]), bytes.fromhex(v["info"]),
                    v["length"])
    assert okm.hex() == v["okm"]


def test_evp_bytes_to_key_published() -> None:
    v = VECTORS["published"]["evp_bytes_to_key_md5"]
    assert evp_bytes_to_key(v["password"].encode(), 32).hex() == v["key32"]
    assert evp_bytes_to_key(v["password"].encode(), 16).hex() == v["key32"][:32]


@pytest.mark.parametrize("password", ["password", "v2sync-vector", "a longer pass phrase 123"])
def test_evp_bytes_to_key_matches_the_openssl_cli(password: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:  # a peer: fails under CI as the v2ray interop tests do
        message = "the openssl CLI (Debian package openssl) is not on PATH"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    result = subprocess.run([openssl, "enc", "-aes-256-cbc", "-md", "md5", "-nosalt", "-k",
                             password, "-P"], capture_output=True, text=True, timeout=10,
                            check=True)
    line = next(x for x in result.stdout.splitlines() if x.startswith("key="))
    assert evp_bytes_to_key(password.encode(), 32).hex().upper() == line[4:].strip()


def test_subkey_is_as_long_as_the_key() -> None:
    key = evp_bytes_to_key(b"pw", 32)
    assert len(ss_subkey(key, bytes(32))) == 32
    assert ss_subkey(key, bytes(32)) != ss_subkey(key, bytes(31) + b"\x01")


def test_method_names_and_aliases_as_4_34() -> None:
    assert method_named("AES-128-GCM") is AES_128_GCM
    assert method_named("aead_aes_256_gcm") is METHODS["aes-256-gcm"]
    assert method_named("chacha20-ietf-poly1305") is METHODS["chacha20-poly1305"]
    assert method_named("plain") is NONE
    for refused in ("aes-256-cfb", "chacha20", "rc4-md5", "xchacha20-ietf-poly1305",
                    "2022-blake3-aes-128-gcm", ""):
        assert method_named(refused) is None


# -- bytes the real v2ray 4.34 wrote ------------------------------------------------------------

@pytest.mark.parametrize("entry", VECTORS["client_requests"], ids=lambda e: e["method"])
def test_decodes_a_v2ray_client_request(entry) -> None:
    decoder = RequestDecoder(account(entry["method"]))
    wire = bytes.fromhex(entry["wire_hex"])
    address, port, rest = decoder.feed(wire)
    assert f"{address}:{port}" == entry["target"]
    # 4.34 sends the target in a chunk of its own, the payload in the next one.
    assert rest == entry["payload"].encode()


@pytest.mark.parametrize("entry", VECTORS["client_datagrams"], ids=lambda e: e["method"])
def test_decodes_a_v2ray_client_datagram(entry) -> None:
    address, port, payload = decode_packet(account(entry["method"]),
                                           bytes.fromhex(entry["wire_hex"]))
    assert f"{address}:{port}" == entry["target"]
    assert payload == entry["payload"].encode()


@pytest.mark.parametrize("entry", VECTORS["server_responses"], ids=lambda e: e["method"])
def test_decodes_a_v2ray_server_response(entry) -> None:
    reader = StreamReader(account(entry["method"]))
    assert b"".join(reader.feed(bytes.fromhex(entry["wire_hex"]))) == entry["payload"].encode()
    assert not reader.eof  # 4.34 ends with a TCP close, never a zero-length chunk


@pytest.mark.parametrize("entry", VECTORS["client_requests"], ids=lambda e: e["method"])
def test_our_encoder_reproduces_the_v2ray_bytes_with_its_salt(entry) -> None:
    acct = account(entry["method"])
    wire = bytes.fromhex(entry["wire_hex"])
    salt = wire[:acct.method.salt_size]
    host, port = entry["target"].rsplit(":", 1)
    writer, head = encode_request(acct, Address.parse(host), int(port), salt=salt)
    assert head + writer.encode(entry["payload"].encode()) == wire


@pytest.mark.parametrize("entry", VECTORS["client_datagrams"], ids=lambda e: e["method"])
def test_our_datagram_reproduces_the_v2ray_bytes_with_its_salt(entry) -> None:
    acct = account(entry["method"])
    wire = bytes.fromhex(entry["wire_hex"])
    host, port = entry["target"].rsplit(":", 1)
    ours = encode_packet(acct, Address.parse(host), int(port), entry["payload"].encode(),
                         salt=wire[:acct.method.salt_size])
    assert ours == wire


# -- round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHOD_NAMES)
def test_request_round_trip_whole_bytewise_and_with_trailer(method: str) -> None:
    acct = account(method)
    writer, head = encode_request(acct, DOMAIN, 443)
    trailer = writer.encode(b"payload that follows")
    result = RequestDecoder(acct).feed(head)
    assert result == (DOMAIN, 443, b"")
    decoder = RequestDecoder(acct)
    results = [decoder.feed(head[i:i + 1]) for i in range(len(head))]
    assert all(r is None for r in results[:-1]) and results[-1] == (DOMAIN, 443, b"")
    decoder = RequestDecoder(acct)
    assert decoder.feed(head + trailer) == (DOMAIN, 443, b"payload that follows")
    assert decoder.reader.feed(writer.encode(b"more")) == [b"more"]


def test_target_parser_contract_and_masked_type_nibble() -> None:
    wire = b"\x03\x0bexample.com\x01\xbb"
    assert_decodes(lambda b: (lambda r: None if r is None else ((r[0], r[1]), r[2]))(
        read_target(b)), wire, (DOMAIN, 443), b"TRAILING")
    # protocol.go masks the address type with 0x0F
    assert read_target(b"\xf1\x7f\x00\x00\x01\x00\x50") == (Address.parse("127.0.0.1"), 80, 7)
    with pytest.raises(RemoteProtocolError):
        read_target(b"\x02\x00\x00")


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("size", [1, WRITE_CHUNK_PAYLOAD, WRITE_CHUNK_PAYLOAD + 1, 200_000])
def test_stream_round_trip_in_pieces(method: str, size: int) -> None:
    acct = account(method)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    wire = StreamWriter(acct).encode(data)
    reader = StreamReader(acct)
    got = b"".join(b"".join(reader.feed(wire[i:i + 997])) for i in range(0, len(wire), 997))
    assert got == data


def test_writer_sends_the_salt_once_and_nothing_for_nothing() -> None:
    acct = account("aes-256-gcm")
    writer = StreamWriter(acct, salt=bytes(32))
    assert writer.encode(b"") == b""
    first = writer.encode(b"x")
    assert first.startswith(bytes(32)) and len(first) == 32 + 18 + 1 + 16
    assert len(writer.encode(b"y")) == 18 + 1 + 16
    with pytest.raises(LocalProtocolError):
        StreamWriter(acct, salt=bytes(16))


def test_zero_length_chunk_ends_the_stream_as_4_34_reads_it() -> None:
    acct = account("aes-128-gcm")
    salt = bytes(range(16))
    sealer_side = StreamWriter(acct, salt=salt)
    body = sealer_side.encode(b"abc")
    # A zero length sealed with the next nonce (2), as a peer that sent one would.
    cipher = acct.cipher(salt)
    eos = cipher.seal((2).to_bytes(12, "little"), b"\x00\x00")
    reader = StreamReader(acct)
    assert reader.feed(body + eos + b"ignored") == [b"abc"]
    assert reader.eof


# -- garbage ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"])
def test_wrong_password_is_an_authentication_error_at_the_first_length(method: str) -> None:
    _, head = encode_request(account(method, "other"), DOMAIN, 443)
    decoder = RequestDecoder(account(method))
    salt = METHODS[method].salt_size
    assert decoder.feed(head[:salt + 17]) is None  # not a whole sealed length yet
    with pytest.raises(AuthenticationError):
        decoder.feed(head[salt + 17:])
    assert decoder.reader.wire_used == salt + 18  # 4.34 read the sealed length, then failed


def test_tampered_chunk_and_oversized_length() -> None:
    """A block that does not open ends the stream: nothing after it, and the next feed
    raises what failed."""
    acct = account("chacha20-poly1305")
    wire = bytearray(StreamWriter(acct).encode(b"hello"))
    wire[-1] ^= 1
    reader = StreamReader(acct)
    assert reader.feed(bytes(wire)) == [] and reader.ended
    assert isinstance(reader.failure, AuthenticationError)
    with pytest.raises(AuthenticationError):
        reader.feed(b"more")
    salt = bytes(32)
    big = acct.cipher(salt).seal(bytes(12), b"\xff\xf0")
    reader = StreamReader(acct)
    assert reader.feed(salt + big) == []
    assert isinstance(reader.failure, RemoteProtocolError)


@pytest.mark.parametrize("cut", ["whole", "byte-by-byte"])
def test_chunks_before_a_bad_one_are_returned(cut: str) -> None:
    """What opened before a tampered chunk is authentic and comes out, in one read or
    fed a byte at a time; then the stream has ended."""
    acct = account("aes-128-gcm")
    writer = StreamWriter(acct)
    wire = writer.encode(b"hello") + bytearray(writer.encode(b"bad!"))
    wire = wire[:-1] + bytes([wire[-1] ^ 1]) + writer.encode(b"after")
    reader = StreamReader(acct)
    pieces = [wire] if cut == "whole" else [wire[i:i + 1] for i in range(len(wire))]
    got = []
    for piece in pieces:
        if reader.ended:
            break
        got += reader.feed(bytes(piece))
    assert got == [b"hello"] and isinstance(reader.failure, AuthenticationError)


def test_a_target_that_does_not_open_raises() -> None:
    acct = account("aes-128-gcm")
    wire = bytearray(encode_request(acct, Address.parse("127.0.0.1"), 80)[1])
    wire[-1] ^= 1
    with pytest.raises(AuthenticationError):
        RequestDecoder(acct).feed(bytes(wire))


def test_none_method_bad_target_and_eof_inside_it() -> None:
    with pytest.raises(RemoteProtocolError):
        RequestDecoder(account("none")).feed(b"\x09garbage")
    acct = account("aes-128-gcm")
    salt = bytes(16)
    cipher = acct.cipher(salt)
    eos = cipher.seal(bytes(12), b"\x00\x00")
    with pytest.raises(RemoteProtocolError):
        RequestDecoder(acct).feed(salt + eos)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_datagram_round_trip_and_limits(method: str) -> None:
    acct = account(method)
    wire = encode_packet(acct, DOMAIN, 53, b"query")
    assert decode_packet(acct, wire) == (DOMAIN, 53, b"query")
    overhead = len(wire) - len(b"query")
    largest = b"x" * (MAX_DATAGRAM - overhead)
    assert len(encode_packet(acct, DOMAIN, 53, largest)) == MAX_DATAGRAM
    with pytest.raises(LocalProtocolError):
        encode_packet(acct, DOMAIN, 53, largest + b"x")
    with pytest.raises(RemoteProtocolError):
        decode_packet(acct, wire + bytes(MAX_DATAGRAM))


@pytest.mark.parametrize("datagram", [b"", bytes(16), bytes(17), bytes(40), bytes(2048)])
def test_short_or_forged_datagrams_are_protocol_errors(datagram: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_packet(account("aes-128-gcm"), datagram)


# -- properties ---------------------------------------------------------------------------------

def survives(call) -> None:
    try:
        call()
    except ProtocolError:
        pass


@FUZZ
@given(st.sampled_from(METHOD_NAMES), st.lists(st.binary(max_size=300), max_size=5))
def test_anything_into_the_request_decoder(method: str, pieces) -> None:
    decoder = RequestDecoder(account(method))

    def feed_all() -> None:
        for piece in pieces:
            result = decoder.feed(piece)
            assert result is None or isinstance(result[2], bytes)
    survives(feed_all)


@FUZZ
@given(st.sampled_from(METHOD_NAMES), st.binary(max_size=2100))
def test_anything_into_the_datagram_decoder(method: str, data: bytes) -> None:
    survives(lambda: decode_packet(account(method), data))


@FUZZ
@given(st.binary(max_size=300))
def test_anything_into_the_target_parser(data: bytes) -> None:
    survives(lambda: read_target(data))


@FUZZ
@given(st.sampled_from(METHOD_NAMES), st.lists(st.binary(max_size=40_000), max_size=4),
       st.lists(st.integers(min_value=1, max_value=20_000), min_size=1, max_size=8))
def test_any_writes_read_back_whatever_the_cuts(method: str, writes, cuts) -> None:
    acct = account(method)
    writer = StreamWriter(acct)
    wire = b"".join(writer.encode(data) for data in writes)
    reader = StreamReader(acct)
    got, pos, i = [], 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        got += reader.feed(wire[pos:pos + step])
        pos, i = pos + step, i + 1
    assert b"".join(got) == b"".join(writes)
    assert not reader.eof
