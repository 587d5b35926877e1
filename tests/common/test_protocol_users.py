"""The VLESS/Trojan user table: keys, unique emails, removal by email (validator.go)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from v2sync.common.errors import ConfigError, UserNotFound
from v2sync.common.protocol.users import KeyedUserTable


@dataclass(frozen=True)
class User:
    key: bytes
    email: str = ""


def test_lookup_add_remove() -> None:
    table: KeyedUserTable = KeyedUserTable("vless")
    alice, bob = User(b"k1", "Alice@x"), User(b"k2")
    table.add(alice)
    table.add(bob)
    assert table.get(b"k1") is alice and table.get(b"k2") is bob and table.get(b"k3") is None
    table.remove("alice@X")  # emails compare case-insensitively
    assert table.get(b"k1") is None and len(table) == 1


def test_duplicate_email_is_a_config_error_with_its_path() -> None:
    table: KeyedUserTable = KeyedUserTable("trojan")
    table.add(User(b"k1", "a@x"))
    with pytest.raises(ConfigError) as info:
        table.add(User(b"k2", "A@X"), "settings.clients[1]")
    assert info.value.path == "settings.clients[1]"
    assert "User A@X already exists." in str(info.value)
    assert table.get(b"k2") is None


@pytest.mark.parametrize("email", ["", "nobody@x"])
def test_removing_an_unknown_or_empty_email(email: str) -> None:
    table: KeyedUserTable = KeyedUserTable("vless")
    table.add(User(b"k1"))  # users without email cannot be removed (validator.go Del)
    with pytest.raises(UserNotFound):
        table.remove(email)
    assert table.get(b"k1") is not None
