"""UUIDs, command keys, alter IDs and security resolution (common/uuid, common/protocol/id.go)."""
from __future__ import annotations

import hashlib

import pytest

from v2sync.proxy.vmess import ids
from v2sync.proxy.vmess.ids import (
    Security, VMessUser, cmd_key, format_uuid, next_id, parse_uuid, random_uuid_bytes,
    resolve_security)

RAW = bytes.fromhex("2418d087648d499086e819dca1d006d3")  # uuid_test.go TestParseString


@pytest.mark.parametrize("text", [
    "2418d087-648d-4990-86e8-19dca1d006d3",
    "2418d087648d499086e819dca1d006d3",            # dashes optional
    "2418D087-648D-4990-86E8-19DCA1D006D3",
    "2418d087-648d499086e8-19dca1d006d3",          # any subset of dashes
    "2418d087-648d-4990-86e8-19dca1d006d3trailing",  # the rest is ignored, as in Go
])
def test_parse_uuid_is_lenient_like_v2ray(text: str) -> None:
    assert parse_uuid(text) == RAW


@pytest.mark.parametrize("text", [
    "2418d087", "2418d087-648k-4990-86e8-19dca1d006d3", "", "-" * 40,
    "2418d087--648d-4990-86e8-19dca1d006d3",  # only one dash per group boundary
    # Spaces inside a group: Go's hex.Decode refuses them (bytes.fromhex would skip them
    # and leave 15 bytes); and non-ASCII digits.
    "24 18 d0-648d-4990-86e8-19dca1d006d3 ", "2418d087-648d-4990-86e8-19dca1d006d\u0663",
])
def test_parse_uuid_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_uuid(text)


def test_version_bits_are_not_checked_and_random_ids_round_trip() -> None:
    assert parse_uuid("00000000-0000-0000-0000-000000000000") == bytes(16)
    raw = random_uuid_bytes()
    assert len(raw) == 16 and parse_uuid(format_uuid(raw)) == raw
    assert format_uuid(RAW) == "2418d087-648d-4990-86e8-19dca1d006d3"
    assert random_uuid_bytes() != random_uuid_bytes()


def test_cmd_key_and_alter_id_chain() -> None:
    assert cmd_key(RAW) == hashlib.md5(RAW + b"c48619fe-8f02-49e0-b9e9-edf763e17e21").digest()
    user = VMessUser(RAW, alter_id=3)
    first = hashlib.md5(RAW + b"16167dc8-16b6-4e6d-b8bb-65dd68113a81").digest()
    assert [a.uuid for a in user.alter_ids] == [first, next_id(first), next_id(next_id(first))]
    assert all(a.cmd_key == cmd_key(a.uuid) for a in user.alter_ids)
    assert user.id.cmd_key == cmd_key(RAW)
    assert user.alter_ids is user.alter_ids  # computed once


def test_next_id_retries_a_fixed_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """If MD5 ever returned its own input, Go appends the retry salt to the running hash."""
    real_md5 = hashlib.md5
    fixed = b"F" * 16

    class FakeMd5:
        def __init__(self, data: bytes = b""):
            self._h = real_md5(data)
            self._fed = data

        def update(self, data: bytes) -> None:
            self._h.update(data)
            self._fed += data

        def digest(self) -> bytes:
            return fixed if self._fed == fixed + ids.NEXT_ID_SALT else self._h.digest()

    monkeypatch.setattr(ids.hashlib, "md5", FakeMd5)
    expected = real_md5(fixed + ids.NEXT_ID_SALT + ids.NEXT_ID_RETRY_SALT).digest()
    assert next_id(fixed) == expected


def test_user_fields_and_validation() -> None:
    user = VMessUser.from_text("2418d087-648d-4990-86e8-19dca1d006d3", level=1, email="a@b")
    assert user.uses_aead and not VMessUser(RAW, alter_id=1).uses_aead
    assert str(user) == "a@b"
    assert user == VMessUser(RAW, 0, 1, "a@b")  # cached keys do not affect equality
    assert len(user.auth_id_key) == 16
    with pytest.raises(ValueError):
        VMessUser(b"short")
    with pytest.raises(ValueError):
        VMessUser(RAW, alter_id=70000)


@pytest.mark.parametrize("machine,expected", [
    ("x86_64", Security.AES128_GCM), ("AMD64", Security.AES128_GCM),
    ("aarch64", Security.AES128_GCM), ("arm64", Security.AES128_GCM),
    ("s390x", Security.AES128_GCM), ("armv7l", Security.CHACHA20_POLY1305),
    ("i686", Security.CHACHA20_POLY1305), ("riscv64", Security.CHACHA20_POLY1305),
])
def test_auto_security_follows_the_architecture(machine: str, expected: Security) -> None:
    assert resolve_security(Security.AUTO, machine) is expected
    assert resolve_security(Security.NONE, machine) is Security.NONE
