"""Server-side VMess authentication state and the request-header decoder.

v2ray ``proxy/vmess/validator.go`` (TimedUserValidator), ``aead/authid.go``
(AuthIDDecoderHolder), ``common/antireplay/replayfilter.go`` and ``encoding/server.go``
(SessionHistory, DecodeRequestHeader). Pure: the clock is injected, nothing here sleeps or
runs a timer; periodic work (legacy table refresh every 10 s, history cleanup every 30 s)
happens lazily on the next call that needs it.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import random
import secrets
import struct
import threading
import time
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple

from v2sync.common.crypto.checksum import crc32_ieee, crc64_ecma
from v2sync.common.crypto.stream import AesBlock
from v2sync.common.errors import AuthenticationError, RemoteProtocolError
from v2sync.proxy.vmess import aead
from v2sync.proxy.vmess.encoding import (
    CommandSection, ServerSession, address_complete, legacy_section_cipher,
    parse_command_section)
from v2sync.proxy.vmess.ids import Security, VMessID, VMessUser

Clock = Callable[[], float]

CACHE_SECONDS = 120            # validator.go cacheDurationSec: legacy window either side of now
UPDATE_INTERVAL = 10           # validator.go updateInterval
REPLAY_INTERVAL = 120          # authid.go NewReplayFilter(120)
REPLAY_CAPACITY = 100_000      # antireplay replayFilterCapacity (per pool)
SESSION_TTL = 180              # server.go: session ids are kept for 3 minutes
SESSION_CLEANUP_INTERVAL = 30
BEHAVIOR_KDF_KEY = b"VMESSBSKDF"
DRAIN_BASE_RANGE = 3266        # server.go BaseDrainSize = Roll(3266)
DRAIN_RAND_RANGE = 64          # RandDrainMax = Roll(64) + 1
DRAIN_READ_FIXED = 16 + 38     # the AuthID/auth and the fixed command-section bytes
# Largest command section: 38 fixed + port 2 + atyp 1 + len 1 + domain 255 + pad 15 + FNV 4.
MAX_SECTION_SIZE = 38 + 2 + 1 + 1 + 255 + 15 + 4
# The most a header can take before decode() stops asking for more: an AEAD header whose
# sealed length says 65535 (only a real user can seal that; an honest one is under 400 bytes).
MAX_REQUEST_HEADER_SIZE = aead.REQUEST_PREFIX_SIZE + 0xFFFF + aead.AEAD_TAG_SIZE
INSECURE = (Security.NONE, Security.LEGACY)  # inbound.go isInsecureEncryption (UNKNOWN -> LEGACY)
AUTH_SIZE = 16

_AUTH_ID = struct.Struct("!qII")
_U64 = struct.Struct("!Q")


class DrainRequired(AuthenticationError):
    """A failure 4.34 answers by draining: read ``drain_size`` bytes in all, then close.

    ``drain_size`` counts from the first byte of the connection, so the inbound reads
    ``drain_size - bytes_already_received`` more (if positive) before closing (anti-probing).
    """

    def __init__(self, message: str, drain_size: int = 0):
        super().__init__(message)
        self.drain_size = drain_size


class ReplayFilter:
    """Two pools swapped every ``interval`` seconds (antireplay.ReplayFilter); a set per pool.

    ``check`` is True for a value not seen in the last one or two intervals. A full pool
    refuses like a full cuckoo filter does, which bounds memory.
    """

    def __init__(self, interval: int = REPLAY_INTERVAL, capacity: int = REPLAY_CAPACITY):
        self._interval = interval
        self._capacity = capacity
        self._lock = threading.Lock()
        self._pools: Tuple[Set[bytes], Set[bytes]] = (set(), set())
        self._swap = False
        self._last_swap: Optional[float] = None

    @staticmethod
    def _insert_unique(pool: Set[bytes], value: bytes, capacity: int) -> bool:
        if value in pool or len(pool) >= capacity:
            return False
        pool.add(value)
        return True

    def check(self, value: bytes, now: float) -> bool:
        with self._lock:
            if self._last_swap is None:
                self._last_swap = now
            if now - self._last_swap >= self._interval:
                self._pools[0 if self._swap else 1].clear()  # forget the older pool
                self._swap = not self._swap
                self._last_swap = now
            return (self._insert_unique(self._pools[0], value, self._capacity)
                    and self._insert_unique(self._pools[1], value, self._capacity))


class SessionHistory:
    """``(uuid, bodyKey, bodyIV)`` seen in the last 3 minutes (server.go SessionHistory)."""

    def __init__(self, clock: Clock = time.time, ttl: float = SESSION_TTL):
        self._clock = clock
        self._ttl = ttl
        self._lock = threading.Lock()
        self._expiry: Dict[Tuple[bytes, bytes, bytes], float] = {}
        self._next_cleanup = 0.0

    def add_if_absent(self, session: Tuple[bytes, bytes, bytes],
                      now: Optional[float] = None) -> bool:
        """Record ``session``; False if it is a live duplicate (a replay)."""
        now = self._clock() if now is None else now
        with self._lock:
            if now >= self._next_cleanup:
                self._expiry = {k: v for k, v in self._expiry.items() if v > now}
                self._next_cleanup = now + SESSION_CLEANUP_INTERVAL
            expiry = self._expiry.get(session)
            if expiry is not None and expiry > now:
                return False
            self._expiry[session] = now + self._ttl
            return True

    def __len__(self) -> int:
        return len(self._expiry)


class _AuthEntry:
    """One legacy auth value: whose it is, for which second, and its taint fuse."""

    __slots__ = ("user", "timestamp", "tainted")

    def __init__(self, user: VMessUser, timestamp: int):
        self.user = user
        self.timestamp = timestamp
        self.tainted = False


class _LegacyID:
    """The auth values of one main or alter ID, oldest first, for incremental refresh."""

    __slots__ = ("user", "mac", "last", "window")

    def __init__(self, user: VMessUser, vmess_id: VMessID, last: int):
        self.user = user
        self.mac = hmac.new(vmess_id.uuid, digestmod=hashlib.md5)  # copied per timestamp
        self.last = last  # newest timestamp generated so far
        self.window: Deque[Tuple[int, bytes]] = collections.deque()


class UserTable:
    """The inbound's users and every lookup on them, behind one lock (TimedUserValidator)."""

    def __init__(self, clock: Clock = time.time):
        self.clock = clock
        self._lock = threading.RLock()
        # One (user, its main+alter legacy IDs) pair per add(), in order (validator.go users).
        self._entries: List[Tuple[VMessUser, List[_LegacyID]]] = []
        self._aead: Dict[bytes, Tuple[Callable[[bytes], bytes], VMessUser]] = {}
        self._aead_list: List[Tuple[Callable[[bytes], bytes], VMessUser]] = []
        self._auth: Dict[bytes, _AuthEntry] = {}
        self._next_refresh = 0.0
        self._replay = ReplayFilter()
        self._seed = 0
        self._fused = False
        self._drain_params: Optional[Tuple[int, int]] = None

    # -- users -------------------------------------------------------------------------
    def add(self, user: VMessUser) -> None:
        now = int(self.clock())
        with self._lock:
            ids = [_LegacyID(user, vid, now - CACHE_SECONDS - 1)
                   for vid in (user.id,) + user.alter_ids]
            self._entries.append((user, ids))
            for legacy in ids:
                self._generate(legacy, now)
            # AEAD users are keyed by the main ID's cmdKey whatever their alterId (validator.go).
            self._aead[user.id.cmd_key] = (AesBlock(user.auth_id_key).decrypt_block, user)
            self._aead_list = list(self._aead.values())
            if not self._fused:
                digest = hmac.new(BEHAVIOR_KDF_KEY, user.uuid, hashlib.sha256).digest()
                self._seed = crc64_ecma(digest, self._seed)

    def add_unique(self, user: VMessUser) -> bool:
        """``add`` unless another user has the same (non-empty) email, case-insensitively
        (inbound.go AddUser); False if one has."""
        with self._lock:
            if user.email and any(u.email.lower() == user.email.lower()
                                  for u, _ in self._entries):
                return False
            self.add(user)
            return True

    def remove(self, email: str) -> bool:
        """Remove the first user whose email matches case-insensitively (validator.go Remove).

        Unlike 4.34, which leaves them to expire, the user's legacy auth values go at once.
        """
        wanted = email.lower()
        with self._lock:
            index = next((i for i, (u, _) in enumerate(self._entries)
                          if u.email.lower() == wanted), None)
            if index is None:
                return False
            user, ids = self._entries.pop(index)
            # Like aead.AuthIDDecoderHolder.RemoveUser: by cmdKey, whoever registered it.
            self._aead.pop(user.id.cmd_key, None)
            self._aead_list = list(self._aead.values())
            for legacy in ids:
                for _, auth in legacy.window:
                    entry = self._auth.get(auth)
                    if entry is not None and entry.user is user:
                        del self._auth[auth]
            return True

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def legacy_auth_count(self) -> int:
        """How many legacy auth values are live (241 per ID once warmed up)."""
        return len(self._auth)

    # -- AEAD ----------------------------------------------------------------------------
    def match_aead(self, auth_id: bytes, now: Optional[float] = None) -> Optional[VMessUser]:
        """The user whose AuthID key decrypts ``auth_id`` to a fresh, CRC-valid block.

        No replay check here: call ``check_auth_id`` once the header is complete.
        """
        now_sec = int(self.clock() if now is None else now)
        unpack = _AUTH_ID.unpack
        with self._lock:  # cryptography contexts are not safe for concurrent use
            for decrypt, user in self._aead_list:
                plain = decrypt(auth_id)
                t, _, crc = unpack(plain)
                # authid.go Match: CRC, t >= 0, |t - now| <= 120 (time first: cheaper)
                if t < 0 or abs(t - now_sec) > aead.AUTH_ID_MAX_SKEW:
                    continue
                if crc == crc32_ieee(plain[:12]):
                    return user
        return None

    def check_auth_id(self, auth_id: bytes, now: Optional[float] = None) -> bool:
        """Record an accepted AuthID; False if it was seen in the last 120-240 s (replay)."""
        return self._replay.check(auth_id, self.clock() if now is None else now)

    # -- legacy --------------------------------------------------------------------------
    def _generate(self, legacy: _LegacyID, now: int) -> None:
        # validator.go generateNewHashes restarts at lastSec inclusive, which re-arms that
        # second's taint fuse; starting after it keeps a burnt fuse burnt.
        begin = max(legacy.last + 1, now - CACHE_SECONDS)
        for ts in range(begin, now + CACHE_SECONDS + 1):
            mac = legacy.mac.copy()
            mac.update(_U64.pack(ts))
            auth = mac.digest()
            self._auth[auth] = _AuthEntry(legacy.user, ts)
            legacy.window.append((ts, auth))
        legacy.last = max(legacy.last, now + CACHE_SECONDS)

    def refresh(self, now: Optional[float] = None) -> None:
        """Extend every ID's window to now+120 and drop values older than now-120."""
        now_sec = int(self.clock() if now is None else now)
        with self._lock:
            for _, ids in self._entries:
                for legacy in ids:
                    self._generate(legacy, now_sec)
                    self._expire(legacy, now_sec - CACHE_SECONDS)
            self._next_refresh = now_sec + UPDATE_INTERVAL

    def _expire(self, legacy: _LegacyID, oldest: int) -> None:
        window = legacy.window
        while window and window[0][0] < oldest:
            _, auth = window.popleft()
            entry = self._auth.get(auth)
            if entry is not None and entry.user is legacy.user:
                del self._auth[auth]

    def lookup_legacy(self, auth: bytes,
                      now: Optional[float] = None) -> Optional[Tuple[VMessUser, int, bool]]:
        """``(user, timestamp, tainted)`` for a legacy auth value, else None (validator.go Get)."""
        now_sec = int(self.clock() if now is None else now)
        with self._lock:
            self._fused = True
            if now_sec >= self._next_refresh:
                self.refresh(now_sec)
            entry = self._auth.get(bytes(auth))
            if entry is None:
                return None
            return entry.user, entry.timestamp, entry.tainted

    def burn_taint(self, auth: bytes) -> bool:
        """Taint a legacy auth value so it is refused from now on (BurnTaintFuse)."""
        with self._lock:
            entry = self._auth.get(bytes(auth))
            if entry is None or entry.tainted:
                return False
            entry.tainted = True
            return True

    # -- drain ---------------------------------------------------------------------------
    def behavior_seed(self) -> int:
        """CRC64-ECMA over HMAC-SHA256("VMESSBSKDF", uuid) of the users added before the
        first connection; random if there were none (validator.go GetBehaviorSeed)."""
        with self._lock:
            self._fused = True
            if self._seed == 0:
                self._seed = secrets.randbits(64) or 1
            return self._seed

    def drain_size(self) -> int:
        """Bytes to drain for one rejected connection: Base + 16 + 38 + Roll(RandDrainMax).

        4.34 draws Base and RandDrainMax from Go's math/rand seeded with the behaviour seed;
        v2sync draws them from Python's ``random.Random(seed)``: the same ranges, also fixed
        per user set, but not the same numbers as the Go binary.
        """
        base, rand_max = self.drain_parameters()
        return base + DRAIN_READ_FIXED + secrets.randbelow(rand_max)

    def drain_parameters(self) -> Tuple[int, int]:
        """``(BaseDrainSize, RandDrainMax)``, fixed once the behaviour seed is fused."""
        seed = self.behavior_seed()
        with self._lock:
            if self._drain_params is None:
                rng = random.Random(seed)
                self._drain_params = (rng.randrange(DRAIN_BASE_RANGE),
                                      rng.randrange(DRAIN_RAND_RANGE) + 1)
            return self._drain_params


class RequestHeaderDecoder:
    """Server side of one connection: ``decode(buf)`` with every byte received so far.

    Follows server.go DecodeRequestHeader: AEAD AuthID first, then the legacy table. Side
    effects (AuthID replay filter, session history, taint fuses) happen only once the whole
    header is in ``buf``, so a call that returns ``None`` can be repeated safely; the user
    match is remembered between calls. Errors: ``DrainRequired`` where 4.34 drains,
    ``AuthenticationError`` / ``RemoteProtocolError`` elsewhere.
    """

    def __init__(self, table: UserTable, sessions: SessionHistory, now: Optional[float] = None,
                 allow_insecure: bool = True):
        self._table = table
        self._sessions = sessions
        self._now = table.clock() if now is None else now
        self._allow_insecure = allow_insecure
        self.drain_size = table.drain_size()  # fuses the behaviour seed, like GetBehaviorSeed
        self._user: Optional[VMessUser] = None
        self._legacy_time: Optional[int] = None

    def _drain(self, message: str) -> DrainRequired:
        return DrainRequired(message, self.drain_size)

    def decode(self, buf: bytes) -> Optional[Tuple[ServerSession, int]]:
        if len(buf) < AUTH_SIZE:
            return None
        auth = bytes(buf[:AUTH_SIZE])
        if self._user is None:
            self._identify(auth)
        if self._legacy_time is None:
            return self._decode_aead(buf, auth)
        return self._decode_legacy(buf, auth)

    def _identify(self, auth: bytes) -> None:
        user = self._table.match_aead(auth, self._now)
        if user is None:
            found = self._table.lookup_legacy(auth, self._now)
            if found is None:
                raise self._drain("vmess: invalid user")
            user, self._legacy_time, tainted = found
            if tainted:
                raise self._drain("vmess: invalid user (tainted auth)")
        self._user = user

    def _decode_aead(self, buf: bytes, auth_id: bytes) -> Optional[Tuple[ServerSession, int]]:
        assert self._user is not None
        try:
            opened = aead.open_request_header(self._user.id.cmd_key, buf)
        except AuthenticationError as e:
            raise self._drain(f"vmess: AEAD header: {e}") from e
        if opened is None:
            return None
        plaintext, consumed = opened
        if not self._table.check_auth_id(auth_id, self._now):
            raise self._drain("vmess: invalid user (replayed AuthID)")
        parsed = parse_command_section(plaintext)
        if parsed is None:
            raise RemoteProtocolError("vmess: AEAD header too short")
        # Bytes after the section inside the sealed header are ignored, as in 4.34.
        return self._finish(parsed[0], consumed, auth_id)

    def _decode_legacy(self, buf: bytes, auth: bytes) -> Optional[Tuple[ServerSession, int]]:
        assert self._user is not None and self._legacy_time is not None
        cipher = legacy_section_cipher(self._user.id.cmd_key, self._legacy_time, encrypt=False)
        parsed = parse_command_section(cipher.update(bytes(buf[AUTH_SIZE:AUTH_SIZE + MAX_SECTION_SIZE])))
        if parsed is None:
            return None
        return self._finish(parsed[0], AUTH_SIZE + parsed[1], auth)

    def truncated(self, buf: bytes) -> None:
        """The client stopped (closed, or went silent past the deadline) inside its header.
        A legacy header cut in its padding or checksum has its auth value burnt, as
        server.go's BurnTaintFuse does there, so no other connection can finish it; one cut
        earlier, or an AEAD one, burns nothing, as in 4.34."""
        if self._user is None or self._legacy_time is None:
            return
        cipher = legacy_section_cipher(self._user.id.cmd_key, self._legacy_time, encrypt=False)
        if address_complete(cipher.update(bytes(buf[AUTH_SIZE:AUTH_SIZE + MAX_SECTION_SIZE]))):
            self._table.burn_taint(bytes(buf[:AUTH_SIZE]))

    def _reject_legacy(self, auth: bytes, message: str) -> DrainRequired:
        self._table.burn_taint(auth)
        return self._drain(message + ", auth tainted")

    def _finish(self, section: CommandSection, consumed: int,
                auth: bytes) -> Tuple[ServerSession, int]:
        assert self._user is not None
        is_aead = self._legacy_time is None
        session_id = (self._user.uuid, section.body_key, section.body_iv)
        if not self._sessions.add_if_absent(session_id, self._now):
            if not is_aead:
                raise self._reject_legacy(auth, "vmess: duplicated session id")
            raise AuthenticationError("vmess: duplicated session id (AEAD request)")
        if not section.checksum_ok:
            if not is_aead:
                raise self._reject_legacy(auth, "vmess: invalid header checksum")
            raise AuthenticationError("vmess: invalid header checksum (AEAD request)")
        header = section.to_header()  # address, security and option checks
        if not self._allow_insecure and header.security in INSECURE:
            raise AuthenticationError(f"vmess: insecure encryption {header.security.name} refused")
        return ServerSession(self._user, header, section, is_aead), consumed


def decode_request_header(buf: bytes, table: UserTable, sessions: SessionHistory,
                          now: Optional[float] = None,
                          allow_insecure: bool = True) -> Optional[Tuple[ServerSession, int]]:
    """One-shot form of ``RequestHeaderDecoder``: ``None`` (need more) or ``(session, consumed)``.

    ``session.header`` is the ``RequestHeader``; ``allow_insecure=False`` is the inbound's
    ``disableInsecureEncryption``. Prefer the decoder object when bytes arrive in pieces:
    it does the AuthID scan once.
    """
    return RequestHeaderDecoder(table, sessions, now, allow_insecure).decode(buf)
