"""VMess identities: UUIDs, command keys, alter IDs and the account a user holds.

v2ray ``common/uuid/uuid.go``, ``common/protocol/id.go``, ``proxy/vmess/account.go`` and
``common/protocol/headers.go`` (security types).
"""
from __future__ import annotations

import enum
import hashlib
import platform
import secrets
from dataclasses import dataclass, field
from functools import cached_property
from typing import Tuple

from v2sync.common.crypto.kdf import vmess_kdf16
from v2sync.proxy.vmess.aead import AuthIdSealer, SpareKeys

UUID_SIZE = 16
UUID_GROUPS = (8, 4, 4, 4, 12)  # hex digits per dash-separated group
UUID_MIN_TEXT = 32
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
CMD_KEY_SALT = b"c48619fe-8f02-49e0-b9e9-edf763e17e21"
NEXT_ID_SALT = b"16167dc8-16b6-4e6d-b8bb-65dd68113a81"
NEXT_ID_RETRY_SALT = b"533eff8a-4113-4b10-b5ce-0f5d76b98cd2"
AUTH_ID_KEY_SALT = b"AES Auth ID Encryption"  # proxy/vmess/aead/consts.go
MAX_ALTER_ID = 65535  # account.go converts alterId with uint16(...)

# headers.go GetSecurityType: "auto" means AES-GCM where AES has hardware support in Go.
_AES_FRIENDLY_MACHINES = frozenset({"x86_64", "amd64", "arm64", "aarch64", "s390x"})


class Security(enum.IntEnum):
    """The body cipher, as sent in the low nibble of header byte 35 (headers.proto)."""

    UNKNOWN = 0
    LEGACY = 1  # aes-128-cfb
    AUTO = 2
    AES128_GCM = 3
    CHACHA20_POLY1305 = 4
    NONE = 5


# The JSON names 4.34 accepts (infra/conf/vmess.go); "aes-128-cfb" is not selectable and
# falls to AUTO there.
SECURITY_NAMES = {
    "aes-128-gcm": Security.AES128_GCM,
    "chacha20-poly1305": Security.CHACHA20_POLY1305,
    "auto": Security.AUTO,
    "none": Security.NONE,
}


def resolve_security(security: Security, machine: str = "") -> Security:
    """Replace AUTO by the concrete cipher a 4.34 client on ``machine`` would pick."""
    if security is not Security.AUTO:
        return security
    arch = (machine or platform.machine()).lower()
    return Security.AES128_GCM if arch in _AES_FRIENDLY_MACHINES else Security.CHACHA20_POLY1305


def parse_uuid(text: str) -> bytes:
    """16 bytes from UUID text, as leniently as ``uuid.ParseString``.

    At least 32 characters; each of the 8-4-4-4-12 hex groups may be preceded by one dash;
    anything after the last group is ignored and the version bits are not checked.
    """
    if len(text) < UUID_MIN_TEXT:
        raise ValueError(f"invalid UUID: {text!r}")
    rest = text
    out = bytearray()
    for digits in UUID_GROUPS:
        if rest.startswith("-"):
            rest = rest[1:]
        group = rest[:digits]
        # Only hex digits, as Go's hex.Decode: bytes.fromhex would skip spaces.
        if len(group) != digits or not _HEX_DIGITS.issuperset(group):
            raise ValueError(f"invalid UUID: {text!r}")
        out += bytes.fromhex(group)
        rest = rest[digits:]
    return bytes(out)


def format_uuid(raw: bytes) -> str:
    """The canonical 8-4-4-4-12 lowercase form."""
    if len(raw) != UUID_SIZE:
        raise ValueError("a UUID has 16 bytes")
    text = raw.hex()
    return "-".join((text[0:8], text[8:12], text[12:16], text[16:20], text[20:32]))


def random_uuid_bytes() -> bytes:
    """16 random bytes with no version bits set, like ``v2ctl uuid`` (uuid.New)."""
    return secrets.token_bytes(UUID_SIZE)


def cmd_key(uuid: bytes) -> bytes:
    """MD5(uuid || salt): the key of the legacy command section and of every AEAD KDF."""
    return hashlib.md5(uuid + CMD_KEY_SALT).digest()


def next_id(uuid: bytes) -> bytes:
    """The alter ID following ``uuid`` (id.go nextID), retrying the rare fixed point."""
    h = hashlib.md5(uuid + NEXT_ID_SALT)
    while True:
        candidate = h.digest()
        if candidate != uuid:
            return candidate
        h.update(NEXT_ID_RETRY_SALT)  # keeps the running hash, as Go's md5hash.Write does


@dataclass(frozen=True)
class VMessID:
    """One ID (main or alter) and its command key, computed once."""

    uuid: bytes
    cmd_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.uuid) != UUID_SIZE:
            raise ValueError("a VMess ID has 16 bytes")
        object.__setattr__(self, "cmd_key", cmd_key(self.uuid))

    def __str__(self) -> str:
        return format_uuid(self.uuid)


def alter_ids(primary: bytes, count: int) -> Tuple[VMessID, ...]:
    """``count`` alter IDs chained from ``primary`` (id.go NewAlterIDs)."""
    out = []
    previous = primary
    for _ in range(count):
        previous = next_id(previous)
        out.append(VMessID(previous))
    return tuple(out)


@dataclass(frozen=True)
class VMessUser:
    """A VMess account plus the user fields v2ray keeps next to it (MemoryUser)."""

    uuid: bytes
    alter_id: int = 0
    level: int = 0
    email: str = ""
    security: Security = Security.AUTO

    def __post_init__(self) -> None:
        if not 0 <= self.alter_id <= MAX_ALTER_ID:
            raise ValueError(f"alterId must be 0..{MAX_ALTER_ID}")
        VMessID(self.uuid)  # validates the length

    @classmethod
    def from_text(cls, uuid: str, alter_id: int = 0, level: int = 0, email: str = "",
                  security: Security = Security.AUTO) -> "VMessUser":
        return cls(parse_uuid(uuid), alter_id, level, email, security)

    @cached_property
    def id(self) -> VMessID:
        """The main ID."""
        return VMessID(self.uuid)

    @cached_property
    def alter_ids(self) -> Tuple[VMessID, ...]:
        return alter_ids(self.uuid, self.alter_id)

    @cached_property
    def auth_id_key(self) -> bytes:
        """AES-128 key that encrypts this user's AEAD AuthID (aead/authid.go)."""
        return vmess_kdf16(self.id.cmd_key, AUTH_ID_KEY_SALT)

    @cached_property
    def auth_id_sealer(self) -> AuthIdSealer:
        """Makes this user's AuthIDs: one cipher for all of a client's connections."""
        return AuthIdSealer(self.auth_id_key)

    @cached_property
    def spare_keys(self) -> SpareKeys:
        """The request keys a client made ahead for this user's next connection."""
        return SpareKeys()

    @property
    def uses_aead(self) -> bool:
        """A 4.34 client sends the AEAD header exactly when alterId is 0 (outbound.go)."""
        return self.alter_id == 0

    def __str__(self) -> str:
        return self.email or format_uuid(self.uuid)
