"""Hypothesis: arbitrary bytes into every VMess decoder give None, a result or a ProtocolError."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from v2sync.common.errors import ProtocolError
from v2sync.common.net import Address
from v2sync.proxy.vmess import aead
from v2sync.proxy.vmess.body import new_body_reader
from v2sync.proxy.vmess.encoding import (
    ClientSession, Command, RequestHeader, legacy_auth, parse_command_section,
    parse_response_plaintext)
from v2sync.proxy.vmess.ids import Security, VMessUser
from v2sync.proxy.vmess.validator import SessionHistory, UserTable, decode_request_header

NOW = 1_700_000_000
USER = VMessUser.from_text("7e4c1e4a-2b6f-4c3e-9d8a-5f1b2c3d4e5f", alter_id=1)
TABLE = UserTable(clock=lambda: NOW)
TABLE.add(USER)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def survives(call) -> None:
    try:
        call()
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=400))
def test_request_header_decoder(data: bytes) -> None:
    survives(lambda: decode_request_header(data, TABLE, SessionHistory(clock=lambda: NOW)))


@FUZZ
@given(st.binary(max_size=400))
def test_section_and_response_parsers(data: bytes) -> None:
    parsed = parse_command_section(data)
    if parsed is not None:
        survives(parsed[0].to_header)
    parse_response_plaintext(data)
    survives(lambda: aead.open_request_header(USER.id.cmd_key, data))
    survives(lambda: aead.open_response_header(b"k" * 16, b"i" * 16, data))


@FUZZ
@given(st.sampled_from([Security.AES128_GCM, Security.CHACHA20_POLY1305, Security.NONE,
                        Security.LEGACY]),
       st.sampled_from([0x00, 0x01, 0x05, 0x0D, 0x09]), st.booleans(),
       st.lists(st.binary(max_size=300), max_size=5))
def test_chunk_readers(security: Security, option: int, packet: bool, pieces) -> None:
    def run() -> None:
        reader = new_body_reader(security, option, packet, b"k" * 16, b"i" * 16)
        for piece in pieces:
            reader.feed(piece)
    survives(run)


@FUZZ
@given(st.booleans(), st.binary(max_size=200))
def test_client_response_decoder(is_aead: bool, data: bytes) -> None:
    survives(lambda: ClientSession(USER, is_aead=is_aead).decode_response_header(data))


@FUZZ
@given(st.integers(min_value=0, max_value=1), st.binary(max_size=330))
def test_request_header_after_a_valid_legacy_auth(which: int, rest: bytes) -> None:
    """Garbage behind a valid legacy auth reaches the command-section parser."""
    table = UserTable(clock=lambda: NOW)
    table.add(USER)
    auth_id = (USER.id, USER.alter_ids[0])[which]
    data = legacy_auth(auth_id.uuid, NOW) + rest
    survives(lambda: decode_request_header(data, table, SessionHistory(clock=lambda: NOW)))


def outcome(call) -> str:
    """"decoded", "more" (None: needs more bytes) or "refused" (a ProtocolError)."""
    try:
        result = call()
    except ProtocolError:
        return "refused"
    return "more" if result is None else "decoded"


@FUZZ
@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255),
       st.integers(min_value=0, max_value=200))
def test_request_header_with_a_flipped_byte_or_cut(index: int, flip: int, cut: int) -> None:
    """A header with any byte changed is never accepted; an intact one decodes whole and
    asks for more when cut short."""
    header = RequestHeader(Command.TCP, Security.AES128_GCM, 0x0D, Address.parse("a.b"), 1)
    client = ClientSession(VMessUser(USER.uuid))  # alterId 0: AEAD
    wire = bytearray(client.encode_request_header(header, NOW))
    position, kept = index % len(wire), len(wire) - cut % len(wire)
    wire[position] ^= flip
    table = UserTable(clock=lambda: NOW)
    table.add(USER)
    result = outcome(lambda: decode_request_header(bytes(wire[:kept]), table,
                                                   SessionHistory(clock=lambda: NOW)))
    if flip and position < kept:
        assert result != "decoded", (position, flip, kept)
    else:
        assert result == ("decoded" if kept == len(wire) else "more"), (position, flip, kept)
