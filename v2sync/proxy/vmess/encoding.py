"""VMess request and response headers, and the client/server session objects around them.

v2ray ``proxy/vmess/encoding/{client,server,commands,encoding}.go``. Pure: no sockets.
The command section (request-header plaintext, shared by the legacy and AEAD forms)::

    Ver(1)=1 | bodyIV(16) | bodyKey(16) | V(1) | Opt(1) | P<<4|Sec (1) | 0 (1) | Cmd(1)
    | port(2) | atyp(1) | addr   (port/address absent for Cmd=Mux) | padding(P) | FNV1a32(4)

Legacy form: ``HMAC-MD5(uuid, ts8) || AES-128-CFB(cmdKey, MD5(ts8 x4), section)``.
AEAD form: see ``aead.py``. Response plaintext: ``V | Opt | CmdID | CmdLen | Cmd``.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from v2sync.common.crypto.checksum import fnv1a32
from v2sync.common.crypto.stream import AesCfb, aes_cfb_decryptor, aes_cfb_encryptor
from v2sync.common.cursor import Cursor, NeedMore
from v2sync.common.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from v2sync.common.net import Address, Destination, Network
from v2sync.common.mux.encoding import MUX_COOL_ADDRESS
from v2sync.common.protocol.address import PORT_FIRST, domain_address
from v2sync.common.protocol.command import Command
from v2sync.proxy.vmess import aead
from v2sync.proxy.vmess.body import (
    OPTION_CHUNK_MASKING, OPTION_CHUNK_STREAM, OPTION_GLOBAL_PADDING, BodyReader, BodyWriter,
    new_body_reader, new_body_writer)
from v2sync.proxy.vmess.ids import Security, VMessID, VMessUser

VERSION = 1
KEY_SIZE = 16
SECTION_FIXED_SIZE = 38          # Ver..Cmd: what server.go reads before the address
MAX_PADDING = 15                 # the P nibble
CHECKSUM_SIZE = 4
LEGACY_TIME_JITTER = 30          # client.go NewTimestampGenerator(now, 30)
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 2, 3
COMMAND_SWITCH_ACCOUNT = 1
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True)
class RequestHeader:
    """What a VMess request asks for (protocol.RequestHeader)."""

    command: Command
    security: Security
    option: int
    address: Address
    port: int
    version: int = VERSION

    @property
    def is_packet(self) -> bool:
        return self.command is Command.UDP

    def destination(self) -> Destination:
        network = Network.UDP if self.is_packet else Network.TCP
        return Destination(self.address, self.port, network)


@dataclass(frozen=True)
class CommandSection:
    """A parsed command section, before the server's checks (server.go order)."""

    version: int
    body_iv: bytes
    body_key: bytes
    response_auth: int
    option: int
    security_nibble: int
    command: int
    address: Optional[Address]   # None when the address did not parse
    port: int
    checksum_ok: bool
    address_error: str = ""

    def to_header(self) -> RequestHeader:
        """The request header, or RemoteProtocolError for what 4.34 rejects after the FNV."""
        if self.address is None:
            raise RemoteProtocolError(f"vmess: invalid remote address {self.address_error}".rstrip())
        security = parse_security(self.security_nibble)
        if security in (Security.UNKNOWN, Security.AUTO):
            raise RemoteProtocolError(f"vmess: unknown security type {self.security_nibble}")
        if self.option & OPTION_GLOBAL_PADDING and not self.option & OPTION_CHUNK_MASKING:
            # 4.34 panics on this combination (notes §0.4); refuse it instead.
            raise RemoteProtocolError("vmess: GlobalPadding without ChunkMasking")
        return RequestHeader(Command(self.command), security, self.option, self.address, self.port,
                             self.version)


def parse_security(nibble: int) -> Security:
    """server.go parseSecurityType: 0 is LEGACY for old clients, unknown values UNKNOWN."""
    if nibble == Security.UNKNOWN:
        return Security.LEGACY
    try:
        return Security(nibble)
    except ValueError:
        return Security.UNKNOWN


def client_options(security: Security, force_padding: bool = False) -> int:
    """The option byte a 4.34 client sends (outbound.go); ``force_padding`` = v2ray.vmess.padding."""
    option = OPTION_CHUNK_STREAM
    if security in (Security.AES128_GCM, Security.CHACHA20_POLY1305, Security.NONE):
        option |= OPTION_CHUNK_MASKING
    aead_cipher = security in (Security.AES128_GCM, Security.CHACHA20_POLY1305, Security.AUTO)
    if (force_padding or aead_cipher) and option & OPTION_CHUNK_MASKING:
        option |= OPTION_GLOBAL_PADDING
    return option


def encode_command_section(header: RequestHeader, body_key: bytes, body_iv: bytes,
                           response_auth: int, padding: bytes) -> bytes:
    """The request-header plaintext including padding and FNV (client.go EncodeRequestHeader)."""
    if header.option & OPTION_GLOBAL_PADDING and not header.option & OPTION_CHUNK_MASKING:
        raise LocalProtocolError("vmess: GlobalPadding (0x08) requires ChunkMasking (0x04)")
    if header.security in (Security.AUTO, Security.UNKNOWN):
        raise LocalProtocolError("vmess: resolve the security type before sending it")
    if len(padding) > MAX_PADDING or len(body_key) != KEY_SIZE or len(body_iv) != KEY_SIZE:
        raise LocalProtocolError("vmess: bad key, IV or padding length")
    out = bytearray([VERSION]) + body_iv + body_key
    out += bytes([response_auth, header.option, len(padding) << 4 | header.security, 0,
                  header.command])
    if header.command is not Command.MUX:
        out += PORT_FIRST.encode(header.address, header.port)
    out += padding
    out += _U32.pack(fnv1a32(out))
    return bytes(out)


def _read_domain(cur: Cursor) -> Tuple[Optional[Address], str]:
    """The domain, or the error 4.34 would report once the checksum has been checked."""
    try:
        return domain_address(cur.take(cur.u8())), ""
    except RemoteProtocolError as e:
        return None, str(e)


def _read_address(cur: Cursor, command: int) -> Tuple[Optional[Address], int, str]:
    """Port then address, consuming exactly what 4.34's parser would even when it fails."""
    if command == Command.MUX:
        return MUX_COOL_ADDRESS, 0, ""
    if command not in (Command.TCP, Command.UDP):
        return None, 0, f"unknown command {command}"
    port = cur.u16()
    atyp = cur.u8()
    if atyp == ATYP_IPV4:
        return Address.from_packed(cur.take(4)), port, ""
    if atyp == ATYP_IPV6:
        return Address.from_packed(cur.take(16)), port, ""
    if atyp == ATYP_DOMAIN:
        address, error = _read_domain(cur)
        return address, port, error
    return None, port, f"unknown address type {atyp}"


def parse_command_section(buf: bytes) -> Optional[Tuple[CommandSection, int]]:
    """Parse a decrypted command section: ``None`` (need more) or ``(section, consumed)``."""
    cur = Cursor(buf)
    try:
        version = cur.u8()
        body_iv, body_key = cur.take(KEY_SIZE), cur.take(KEY_SIZE)
        response_auth, option, pad_sec, _reserved, command = cur.take(5)
        address, port, error = _read_address(cur, command)
        cur.take(pad_sec >> 4)
        checked = bytes(buf[:cur.pos])
        (checksum,) = _U32.unpack(cur.take(CHECKSUM_SIZE))
    except NeedMore:
        return None
    section = CommandSection(version, body_iv, body_key, response_auth, option, pad_sec & 0x0F,
                             command, address, port, checksum == fnv1a32(checked), error)
    return section, cur.pos


def address_complete(buf: bytes) -> bool:
    """Whether a decrypted command section holds its whole address (what remains is its
    padding and checksum)."""
    cur = Cursor(buf)
    try:
        cur.take(1 + 2 * KEY_SIZE + 4)
        _read_address(cur, cur.u8())
    except NeedMore:
        return False
    return True


def legacy_auth(uuid: bytes, timestamp: int) -> bytes:
    """The 16-byte legacy auth: HMAC-MD5 keyed with the ID of a big-endian uint64 time."""
    return hmac.new(uuid, _U64.pack(timestamp), hashlib.md5).digest()


def legacy_section_cipher(cmd_key: bytes, timestamp: int, encrypt: bool) -> AesCfb:
    """AES-128-CFB over the command section, IV = MD5(ts8 x4) (client.go hashTimestamp).

    ``cmd_key`` is always the *main* ID's: client.go and server.go use ``account.ID.CmdKey()``
    even when the auth was made with an alter ID.
    """
    iv = hashlib.md5(_U64.pack(timestamp) * 4).digest()
    return (aes_cfb_encryptor if encrypt else aes_cfb_decryptor)(cmd_key, iv)


def seal_legacy_request_header(id_for_auth: VMessID, cmd_key: bytes, timestamp: int,
                               section: bytes) -> bytes:
    """``HMAC-MD5(id_for_auth.uuid, ts) || CFB(cmd_key, section)``."""
    return legacy_auth(id_for_auth.uuid, timestamp) + legacy_section_cipher(
        cmd_key, timestamp, encrypt=True).update(section)


def response_keys(body_key: bytes, body_iv: bytes, is_aead: bool) -> Tuple[bytes, bytes]:
    """Response body key and IV: MD5 of the request ones, or SHA-256[:16] after an AEAD header."""
    if is_aead:
        return hashlib.sha256(body_key).digest()[:16], hashlib.sha256(body_iv).digest()[:16]
    return hashlib.md5(body_key).digest(), hashlib.md5(body_iv).digest()


@dataclass(frozen=True)
class SwitchAccount:
    """Response command 1 (protocol.CommandSwitchAccount): the inbound's detour user."""

    host: Optional[Address]
    port: int
    uuid: bytes
    alter_ids: int
    level: int
    valid_min: int


@dataclass(frozen=True)
class ResponseHeader:
    response_auth: int
    option: int = 0
    command: Optional[SwitchAccount] = None


def _marshal_switch_account(cmd: SwitchAccount) -> bytes:
    host = str(cmd.host).encode() if cmd.host is not None else b""
    return (bytes([len(host)]) + host + _U16.pack(cmd.port) + cmd.uuid
            + _U16.pack(cmd.alter_ids) + bytes([cmd.level & 0xFF, cmd.valid_min]))


def encode_response_plaintext(header: ResponseHeader) -> bytes:
    """``V | Opt | CmdID | CmdLen | FNV(data) | data``, or ``V Opt 0 0`` (server.go)."""
    head = bytes([header.response_auth, header.option])
    if header.command is None:
        return head + b"\0\0"
    data = _marshal_switch_account(header.command)
    if len(data) + CHECKSUM_SIZE > 0xFF:
        return head + b"\0\0"  # commands.go ErrCommandTooLarge: sent without a command
    return (head + bytes([COMMAND_SWITCH_ACCOUNT, len(data) + CHECKSUM_SIZE])
            + _U32.pack(fnv1a32(data)) + data)


def _unmarshal_switch_account(data: bytes) -> Optional[SwitchAccount]:
    """commands.go UnmarshalCommand with the CVE-2021-4070 bound fixed; bad data -> None."""
    if len(data) <= CHECKSUM_SIZE or _U32.unpack(data[:4])[0] != fnv1a32(data[4:]):
        return None
    cur = Cursor(data, pos=CHECKSUM_SIZE)
    try:
        host = cur.take(cur.u8())
        port, uuid, alter_ids = cur.u16(), cur.take(16), cur.u16()
        level, valid_min = cur.u8(), cur.u8()
    except NeedMore:
        return None
    address = Address.parse(host.decode("latin-1")) if host else None
    return SwitchAccount(address, port, uuid, alter_ids, level, valid_min)


def parse_response_plaintext(buf: bytes) -> Optional[Tuple[ResponseHeader, int]]:
    """Inverse of ``encode_response_plaintext``; an unreadable command is dropped, as in 4.34."""
    if len(buf) < 4:
        return None
    auth, option, cmd_id, cmd_len = buf[0], buf[1], buf[2], buf[3]
    if cmd_id == 0:
        return ResponseHeader(auth, option), 4
    if len(buf) < 4 + cmd_len:
        return None
    data = bytes(buf[4:4 + cmd_len])
    command = _unmarshal_switch_account(data) if cmd_id == COMMAND_SWITCH_ACCOUNT else None
    return ResponseHeader(auth, option, command), 4 + cmd_len


class ClientSession:
    """One outbound VMess connection (client.go ClientSession): keys, header codecs, bodies.

    ``random_bytes`` supplies every random choice (keys, padding, nonce, jitter), so tests can
    replay a session byte for byte.
    """

    def __init__(self, user: VMessUser, is_aead: Optional[bool] = None,
                 random_bytes: RandomBytes = os.urandom):
        self.user = user
        self.is_aead = user.uses_aead if is_aead is None else is_aead
        self._random = random_bytes
        seed = random_bytes(2 * KEY_SIZE + 1)
        self.request_key, self.request_iv = seed[:KEY_SIZE], seed[KEY_SIZE:2 * KEY_SIZE]
        self.response_auth = seed[2 * KEY_SIZE]
        self.response_key, self.response_iv = response_keys(
            self.request_key, self.request_iv, self.is_aead)
        self._response_cfb: Optional[AesCfb] = None
        self._response_decoded = False
        self._response_ciphers: Optional[aead.ResponseCiphers] = None
        self._response_body: Optional[BodyReader] = None

    def _roll(self, n: int) -> int:
        return int.from_bytes(self._random(4), "big") % n

    def encode_request_header(self, header: RequestHeader, now: float,
                              keys: Optional[aead.RequestKeys] = None) -> bytes:
        """The whole request header; ``now`` is the Unix time in seconds. ``keys``: an AEAD
        header's, made ahead in ``now``'s second (``SpareKeys.take``); else derived here."""
        padding = self._random(self._roll(MAX_PADDING + 1))
        section = encode_command_section(header, self.request_key, self.request_iv,
                                         self.response_auth, padding)
        if self.is_aead:  # exact time, no jitter (aead/encrypt.go)
            return aead.seal_with_keys(keys or self.request_keys(now), section)
        timestamp = int(now) + self._roll(2 * LEGACY_TIME_JITTER) - LEGACY_TIME_JITTER
        alters = self.user.alter_ids  # MemoryAccount.AnyValidID: an alter ID if there is one
        id_for_auth = alters[self._roll(len(alters))] if alters else self.user.id
        return seal_legacy_request_header(id_for_auth, self.user.id.cmd_key, timestamp, section)

    def request_keys(self, now: float) -> aead.RequestKeys:
        """An AEAD header's keys for ``now``'s second: a fresh AuthID and nonce."""
        second = int(now)
        auth_id = self.user.auth_id_sealer.create(second, self._random(4))
        nonce = self._random(aead.CONNECTION_NONCE_SIZE)
        return aead.RequestKeys(self.user.id.cmd_key, second, auth_id, nonce)

    def request_body_writer(self, header: RequestHeader) -> BodyWriter:
        return new_body_writer(header.security, header.option, header.is_packet,
                               self.request_key, self.request_iv)

    def prepare_response(self, header: RequestHeader) -> None:
        """Derive what opens the answer (an AEAD header's ciphers: four KDFs and two AES-GCM
        keys; the body's reader) now, while the request travels, so the answer's first
        bytes are opened as they arrive. A legacy header's body goes on from the header's
        own stream, so only the AEAD header's is made ahead."""
        if not self.is_aead or self._response_ciphers is not None:
            return
        self._response_ciphers = aead.response_ciphers(self.response_key, self.response_iv)
        self._response_body = new_body_reader(header.security, header.option, header.is_packet,
                                              self.response_key, self.response_iv)

    def decode_response_header(self, buf: bytes) -> Optional[Tuple[ResponseHeader, int]]:
        """``None`` (need more) or ``(header, consumed)``; a wrong V is AuthenticationError."""
        cfb: Optional[AesCfb] = None  # the legacy header's stream (AES-CFB), never AEAD's
        if self.is_aead:
            opened = aead.open_response_header(self.response_key, self.response_iv, buf,
                                               self._response_ciphers)
            if opened is None:
                return None
            plaintext, consumed = opened
            parsed = parse_response_plaintext(plaintext)
            if parsed is None:
                raise RemoteProtocolError("vmess: response header too short")
            header = parsed[0]
        else:  # the CFB stream that decrypts the header goes on into a legacy body
            if len(buf) < 4:
                return None
            cfb = aes_cfb_decryptor(self.response_key, self.response_iv)
            head = cfb.update(bytes(buf[:4]))
            consumed = 4 + (head[3] if head[2] else 0)
            if len(buf) < consumed:
                return None
            parsed = parse_response_plaintext(head + cfb.update(bytes(buf[4:consumed])))
            if parsed is None:  # was a TypeError unpacking None
                raise RemoteProtocolError("vmess: response header too short")
            header = parsed[0]
        if header.response_auth != self.response_auth:
            raise AuthenticationError("vmess: unexpected response header")
        self._response_decoded = True
        self._response_cfb = cfb
        return header, consumed

    def response_body_reader(self, header: RequestHeader) -> BodyReader:
        if not self._response_decoded:
            raise LocalProtocolError("vmess: decode the response header first")
        if self._response_body is not None:
            return self._response_body
        # After an AEAD header a legacy body starts its own stream from the key and IV.
        return new_body_reader(header.security, header.option, header.is_packet,
                               self.response_key, self.response_iv, cfb=self._response_cfb)


class ServerSession:
    """One accepted VMess connection (server.go ServerSession), made by the header decoder."""

    def __init__(self, user: VMessUser, header: RequestHeader, section: CommandSection,
                 is_aead: bool):
        self.user = user
        self.header = header
        self.is_aead = is_aead
        self.request_key, self.request_iv = section.body_key, section.body_iv
        self.response_auth = section.response_auth
        self.response_key, self.response_iv = response_keys(
            self.request_key, self.request_iv, is_aead)
        self._response_cfb: Optional[AesCfb] = None
        self._response_encoded = False

    def request_body_reader(self, max_chunk_size: int = 0xFFFF) -> BodyReader:
        return new_body_reader(self.header.security, self.header.option, self.header.is_packet,
                               self.request_key, self.request_iv, max_chunk_size=max_chunk_size)

    def encode_response_header(self, command: Optional[SwitchAccount] = None) -> bytes:
        """The response header; write it before (or with) the first response chunk."""
        plaintext = encode_response_plaintext(ResponseHeader(self.response_auth, 0, command))
        self._response_encoded = True
        if self.is_aead:  # the legacy body, if any, starts a fresh CFB stream
            return aead.seal_response_header(self.response_key, self.response_iv, plaintext)
        cfb = self._response_cfb = aes_cfb_encryptor(self.response_key, self.response_iv)
        return cfb.update(plaintext)

    def response_body_writer(self) -> BodyWriter:
        if not self._response_encoded:
            raise LocalProtocolError("vmess: encode the response header first")
        return new_body_writer(self.header.security, self.header.option, self.header.is_packet,
                               self.response_key, self.response_iv, cfb=self._response_cfb)
