"""Request command section, AEAD/legacy header framing and response headers (encoding.go, aead/)."""
from __future__ import annotations

import struct
from typing import Callable, Optional, Tuple, TypeVar

import pytest

from v2sync.common.crypto.checksum import fnv1a32
from v2sync.common.crypto.stream import AesBlock
from v2sync.common.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from v2sync.common.net import Address, AddressKind
from v2sync.proxy.vmess import aead
from v2sync.proxy.vmess.encoding import (
    ClientSession, Command, CommandSection, RequestHeader, ResponseHeader, ServerSession,
    SwitchAccount, client_options, encode_command_section, encode_response_plaintext,
    parse_command_section, parse_response_plaintext, parse_security, response_keys)
from v2sync.proxy.vmess.ids import Security, VMessUser

T = TypeVar("T")
KEY, IV = bytes(range(16)), bytes(range(16, 32))
USER = VMessUser.from_text("7e4c1e4a-2b6f-4c3e-9d8a-5f1b2c3d4e5f")
TRAILER = b"\x01trailing bytes\xff"


def feed_all_ways(decode: Callable[[bytes], Optional[Tuple[T, int]]], wire: bytes) -> T:
    """Whole, one byte at a time, and with trailing bytes: all must agree."""
    whole = decode(wire)
    assert whole is not None and whole[1] == len(wire)
    for n in range(len(wire)):
        assert decode(wire[:n]) is None, f"decoded from a {n}-byte prefix"
    trailed = decode(wire + TRAILER)
    assert trailed is not None and trailed[1] == len(wire)
    assert (wire + TRAILER)[trailed[1]:] == TRAILER
    assert trailed[0] == whole[0]
    return whole[0]


def header(address: str = "example.com", command: Command = Command.TCP,
           security: Security = Security.AES128_GCM, option: int = 0x0D,
           port: int = 443) -> RequestHeader:
    return RequestHeader(command, security, option, Address.parse(address), port)


@pytest.mark.parametrize("address", ["example.com", "1.2.3.4", "2001:db8::1", "a" * 255])
@pytest.mark.parametrize("padding", [b"", b"p" * 15])
def test_command_section_round_trip(address: str, padding: bytes) -> None:
    sent = header(address)
    wire = encode_command_section(sent, KEY, IV, 0x42, padding)
    section = feed_all_ways(parse_command_section, wire)
    assert (section.body_key, section.body_iv, section.response_auth) == (KEY, IV, 0x42)
    assert section.checksum_ok and section.to_header() == sent


def test_command_section_layout_matches_the_notes() -> None:
    wire = encode_command_section(header("1.2.3.4", port=0x1234), KEY, IV, 0x42, b"PP")
    assert wire[0] == 1 and wire[1:17] == IV and wire[17:33] == KEY  # IV comes first
    assert wire[33:38] == bytes([0x42, 0x0D, 0x23, 0, 1])  # V, opt, P<<4|sec, 0, cmd
    assert wire[38:45] == b"\x12\x34\x01\x01\x02\x03\x04"  # port first, then atyp + IPv4
    assert wire[45:47] == b"PP" and wire[47:] == struct.pack("!I", fnv1a32(wire[:47]))


def test_mux_has_no_address_and_decodes_to_v1_mux_cool() -> None:
    wire = encode_command_section(header(command=Command.MUX), KEY, IV, 1, b"")
    assert len(wire) == 38 + 4
    parsed = feed_all_ways(parse_command_section, wire).to_header()
    assert parsed.command is Command.MUX and str(parsed.destination()) == "tcp:v1.mux.cool:0"


def raw_section(tail: bytes, sec_byte: int = 0x03, command: int = 1, option: int = 0x0D) -> bytes:
    body = bytes([1]) + IV + KEY + bytes([7, option, sec_byte, 0, command]) + tail
    return body + struct.pack("!I", fnv1a32(body))


@pytest.mark.parametrize("domain,kind,value", [
    (b"127.0.0.1", AddressKind.IPV4, "127.0.0.1"),
    (b"[::1]", AddressKind.IPV6, "::1"),
    (b"1example.com", AddressKind.DOMAIN, "1example.com"),
    (b"under_score-ok.example", AddressKind.DOMAIN, "under_score-ok.example"),
])
def test_domain_that_looks_like_an_ip_is_an_ip(domain: bytes, kind: AddressKind, value: str) -> None:
    parsed = parse_command_section(raw_section(b"\x00\x50\x02" + bytes([len(domain)]) + domain))
    assert parsed is not None
    address = parsed[0].to_header().address
    assert (address.kind, address.value) == (kind, value)


@pytest.mark.parametrize("tail", [
    b"\x00\x50\x02\x0bexample com",    # space is outside [0-9A-Za-z._-]
    b"\x00\x50\x02\x00",               # empty domain
    b"\x00\x50\x02\x04\xc3\xa9.x",     # non-ASCII
    b"\x00\x50\x09",                   # unknown address type
])
def test_bad_addresses_parse_but_are_refused(tail: bytes) -> None:
    parsed = parse_command_section(raw_section(tail))
    assert parsed is not None and parsed[0].checksum_ok and parsed[0].address is None
    with pytest.raises(RemoteProtocolError, match="invalid remote address"):
        parsed[0].to_header()


def test_unknown_command_is_refused() -> None:
    parsed = parse_command_section(raw_section(b"", command=100))
    assert parsed is not None
    with pytest.raises(RemoteProtocolError):
        parsed[0].to_header()


@pytest.mark.parametrize("nibble,expected", [(0, Security.LEGACY), (1, Security.LEGACY),
                                             (3, Security.AES128_GCM), (5, Security.NONE),
                                             (2, Security.AUTO), (9, Security.UNKNOWN)])
def test_parse_security(nibble: int, expected: Security) -> None:
    assert parse_security(nibble) is expected


@pytest.mark.parametrize("sec_byte", [0x02, 0x09, 0x0F])
def test_auto_and_unknown_security_are_refused(sec_byte: int) -> None:
    parsed = parse_command_section(raw_section(b"\x00\x50\x01\x01\x02\x03\x04", sec_byte))
    with pytest.raises(RemoteProtocolError, match="security"):
        parsed[0].to_header()


def test_checksum_mismatch_is_reported() -> None:
    wire = bytearray(encode_command_section(header(), KEY, IV, 1, b""))
    wire[-1] ^= 1
    parsed = parse_command_section(bytes(wire))
    assert parsed is not None and not parsed[0].checksum_ok


def test_global_padding_needs_masking_both_ways() -> None:
    with pytest.raises(LocalProtocolError):
        encode_command_section(header(option=0x09), KEY, IV, 1, b"")
    parsed = parse_command_section(raw_section(b"\x00\x50\x01\x01\x02\x03\x04", option=0x09))
    with pytest.raises(RemoteProtocolError, match="GlobalPadding"):
        parsed[0].to_header()


@pytest.mark.parametrize("bad", [dict(security=Security.AUTO), dict(address="a" * 256)])
def test_encoder_refuses_what_cannot_be_sent(bad: dict) -> None:
    with pytest.raises(LocalProtocolError):
        encode_command_section(header(**bad), KEY, IV, 1, b"")


def test_client_options_as_4_34() -> None:
    assert client_options(Security.AES128_GCM) == 0x0D
    assert client_options(Security.CHACHA20_POLY1305) == 0x0D
    assert client_options(Security.NONE) == 0x05
    assert client_options(Security.LEGACY) == 0x01
    assert client_options(Security.NONE, force_padding=True) == 0x0D
    assert client_options(Security.LEGACY, force_padding=True) == 0x01  # padding needs masking


def test_response_keys() -> None:
    import hashlib
    assert response_keys(KEY, IV, False) == (hashlib.md5(KEY).digest(), hashlib.md5(IV).digest())
    assert response_keys(KEY, IV, True) == (hashlib.sha256(KEY).digest()[:16],
                                            hashlib.sha256(IV).digest()[:16])


# -- AEAD framing ------------------------------------------------------------------------

def sealed_request(plaintext: bytes = b"Test Header", now: int = 1_700_000_000) -> bytes:
    auth_id = aead.create_auth_id(AesBlock(USER.auth_id_key), now, b"rand")
    return aead.seal_request_header(USER.id.cmd_key, auth_id, plaintext)


def test_auth_id_carries_time_and_crc() -> None:
    block = AesBlock(USER.auth_id_key)
    auth_id = aead.create_auth_id(block, 1_700_000_000, b"abcd")
    assert aead.auth_id_time(block, auth_id) == 1_700_000_000
    assert aead.auth_id_time(AesBlock(b"x" * 16), auth_id) is None


def test_aead_request_header_round_trip() -> None:
    wire = sealed_request()
    assert len(wire) == 16 + 18 + 8 + len(b"Test Header") + 16
    opened = feed_all_ways(lambda b: aead.open_request_header(USER.id.cmd_key, b), wire)
    assert opened == b"Test Header"


def test_aead_request_header_tampering_is_detected() -> None:
    """aead/encrypt_test.go TestOpenVMessAEADHeader4: flip any of the first 61 bytes."""
    wire = sealed_request()
    for i in range(min(61, len(wire))):
        broken = bytearray(wire)
        broken[i] ^= 0xFF
        with pytest.raises(AuthenticationError):
            aead.open_request_header(USER.id.cmd_key, bytes(broken))


def test_aead_response_header_round_trip_and_tamper() -> None:
    wire = aead.seal_response_header(KEY, IV, b"\x07\x00\x00\x00")
    assert len(wire) == 18 + 4 + 16
    assert feed_all_ways(lambda b: aead.open_response_header(KEY, IV, b), wire) == b"\x07\x00\x00\x00"
    for i in range(len(wire)):
        broken = bytearray(wire)
        broken[i] ^= 0x80
        with pytest.raises(AuthenticationError):
            aead.open_response_header(KEY, IV, bytes(broken))


# -- response plaintext and the client's response decoder ---------------------------------

SWITCH = SwitchAccount(Address.parse("example.org"), 10086, bytes(range(16)), 4, 1, 5)


@pytest.mark.parametrize("response", [ResponseHeader(9), ResponseHeader(9, 0, SWITCH),
                                      ResponseHeader(9, 0, SwitchAccount(None, 1, bytes(16), 0, 0, 0))])
def test_response_plaintext_round_trip(response: ResponseHeader) -> None:
    wire = encode_response_plaintext(response)
    assert feed_all_ways(parse_response_plaintext, wire) == response


def test_response_plaintext_layout_and_bad_commands() -> None:
    assert encode_response_plaintext(ResponseHeader(9)) == b"\x09\x00\x00\x00"
    wire = bytearray(encode_response_plaintext(ResponseHeader(9, 0, SWITCH)))
    assert wire[2] == 1 and wire[3] == len(wire) - 4
    wire[5] ^= 1  # FNV of the command data no longer matches: the command is dropped
    assert parse_response_plaintext(bytes(wire)) == (ResponseHeader(9), len(wire))
    unknown = b"\x09\x00\x07\x03abc"
    assert parse_response_plaintext(unknown) == (ResponseHeader(9), 7)
    huge = SwitchAccount(Address.parse("h" * 250), 1, bytes(16), 0, 0, 0)
    assert encode_response_plaintext(ResponseHeader(9, 0, huge)) == b"\x09\x00\x00\x00"


@pytest.mark.parametrize("prepared", [False, True])
@pytest.mark.parametrize("is_aead", [True, False])
@pytest.mark.parametrize("command", [None, SWITCH])
def test_response_header_between_sessions(is_aead: bool, command: Optional[SwitchAccount],
                                          prepared: bool) -> None:
    client = ClientSession(USER, is_aead=is_aead)
    if prepared:  # as the outbound does while its request travels
        client.prepare_response(header())
    section = encode_command_section(header(), client.request_key, client.request_iv,
                                     client.response_auth, b"")
    parsed = parse_command_section(section)[0]
    server = ServerSession(USER, parsed.to_header(), parsed, is_aead)
    wire = server.encode_response_header(command)
    got = feed_all_ways(client.decode_response_header, wire)
    assert got == ResponseHeader(client.response_auth, 0, command)


@pytest.mark.parametrize("security", [Security.AES128_GCM, Security.LEGACY])
@pytest.mark.parametrize("is_aead", [True, False])
def test_a_response_body_read_with_what_was_prepared_ahead_is_the_same(
        is_aead: bool, security: Security) -> None:
    sent = header(security=security)
    client = ClientSession(USER, is_aead=is_aead)
    section = encode_command_section(sent, client.request_key, client.request_iv,
                                     client.response_auth, b"")
    parsed = parse_command_section(section)[0]
    server = ServerSession(USER, parsed.to_header(), parsed, is_aead)
    head = server.encode_response_header()
    writer = server.response_body_writer()
    wire = head + writer.encode(b"first answer") + writer.encode(b"x" * 5000)
    client.prepare_response(sent)
    _, used = client.decode_response_header(wire)
    reader = client.response_body_reader(sent)
    assert b"".join(reader.feed(wire[used:])) == b"first answer" + b"x" * 5000


def test_wrong_response_auth_is_refused() -> None:
    client = ClientSession(USER, is_aead=True)
    wire = aead.seal_response_header(client.response_key, client.response_iv,
                                     bytes([client.response_auth ^ 1, 0, 0, 0]))
    with pytest.raises(AuthenticationError):
        client.decode_response_header(wire)


def test_section_dataclass_is_frozen() -> None:
    section = parse_command_section(encode_command_section(header(), KEY, IV, 1, b""))[0]
    assert isinstance(section, CommandSection)
    with pytest.raises(Exception):
        section.port = 1  # type: ignore[misc]
