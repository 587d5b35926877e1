"""The user table of VLESS and Trojan inbounds (v2ray ``proxy/vless/validator.go``,
``proxy/trojan/validator.go``: the same code twice, here once).

A user is found by the key its protocol puts on the wire: the 16-byte UUID for VLESS, the
56 ASCII bytes of hex(SHA224(password)) for Trojan. Emails are unique (case-insensitively)
when set, and removal goes by email, as the API's AlterInbound asks.

Lookups happen once per connection from many threads; changes are rare (config load, the
API). So changes copy the key dict under the lock and publish the copy in one assignment,
and ``get`` reads whichever dict is current without taking the lock.
"""
from __future__ import annotations

import threading
from typing import Dict, Generic, Iterable, Iterator, Protocol, Tuple, TypeVar

from v2sync.common.errors import UserExists, UserNotFound


class KeyedUser(Protocol):
    @property
    def key(self) -> bytes: ...

    @property
    def email(self) -> str: ...


U = TypeVar("U", bound=KeyedUser)


class KeyedUserTable(Generic[U]):
    """Users by wire key; one lock for changes, lock-free lookups."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self._lock = threading.Lock()
        self._by_key: Dict[bytes, U] = {}
        self._by_email: Dict[str, U] = {}

    def get(self, key: bytes) -> "U | None":
        return self._by_key.get(key)

    def add(self, user: U, path: str = "") -> None:
        """Raises ConfigError (at ``path``) when the email is taken, as validator.go Add.
        A second user with the same key replaces the first for lookups, as there."""
        email = user.email.lower()
        with self._lock:
            if email and email in self._by_email:
                raise UserExists(f"{self.protocol}: User {user.email} already exists.",
                                 user.email, path, expected="a unique email")
            by_key = dict(self._by_key)
            by_key[user.key] = user
            if email:
                self._by_email[email] = user
            self._by_key = by_key

    def remove(self, email: str) -> None:
        """Raises UserNotFound for an empty or unknown email (validator.go Del)."""
        wanted = email.lower()
        with self._lock:
            user = self._by_email.pop(wanted, None) if wanted else None
            if user is None:
                raise UserNotFound(f"User {email} not found.")  # validator.go Del
            by_key = dict(self._by_key)
            if by_key.get(user.key) is user:
                del by_key[user.key]
            self._by_key = by_key

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[U]:
        return iter(list(self._by_key.values()))


def check_unique_emails(users: Iterable[Tuple[KeyedUser, str]], protocol: str) -> None:
    """Config time: (user, JSON path) pairs whose emails repeat are refused where the
    second one is, as 4.34 refuses the config (validator.go Add, run by ``v2ray -test``)."""
    table: KeyedUserTable = KeyedUserTable(protocol)
    for user, path in users:
        table.add(user, path)
