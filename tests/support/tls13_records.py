"""A TLS 1.3 client whose record layer a test takes over after the handshake, to send what
Python's ssl never sends by itself (a stream of KeyUpdate messages).

The handshake is Python's ssl over memory BIOs; the client's application traffic secret
comes from its keylog (``CLIENT_TRAFFIC_SECRET_0``), and records are sealed here from RFC
8446 (§5.2 records, §7.1 HKDF-Expand-Label, §7.2 the KeyUpdate's next secret, §7.3 keys).
It shares no code with v2sync's TLS side (OpenSSL through the ssl module and pyOpenSSL).
"""
from __future__ import annotations

import ssl
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from support.peers import connect_loopback

_SUITES: Dict[str, Tuple[Any, int, Any]] = {
    "TLS_AES_128_GCM_SHA256": (AESGCM, 16, hashes.SHA256()),
    "TLS_AES_256_GCM_SHA384": (AESGCM, 32, hashes.SHA384()),
    "TLS_CHACHA20_POLY1305_SHA256": (ChaCha20Poly1305, 32, hashes.SHA256()),
}
_APPLICATION_DATA = 23
_HANDSHAKE = 22
_KEY_UPDATE = 24
UPDATE_NOT_REQUESTED, UPDATE_REQUESTED = 0, 1
MAX_HANDSHAKE_READS = 100


def _expand_label(secret: bytes, label: bytes, length: int, digest: Any) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return HKDFExpand(digest, length, info).derive(secret)


class _Sender:
    """One direction's keys: seals inner plaintext records, moves on at a KeyUpdate."""

    def __init__(self, secret: bytes, suite: str):
        self.aead_type, self.key_length, self.digest = _SUITES[suite]
        self._use(secret)

    def _use(self, secret: bytes) -> None:
        self.secret = secret
        self.aead = self.aead_type(_expand_label(secret, b"key", self.key_length, self.digest))
        self.iv = _expand_label(secret, b"iv", 12, self.digest)
        self.sequence = 0

    def next_secret(self) -> None:
        self._use(_expand_label(self.secret, b"traffic upd", self.digest.digest_size,
                                self.digest))

    def seal(self, content_type: int, data: bytes) -> bytes:
        inner = data + bytes([content_type])
        head = bytes([_APPLICATION_DATA, 3, 3]) + struct.pack("!H", len(inner) + 16)
        nonce = bytes(a ^ b for a, b in zip(self.iv, self.sequence.to_bytes(12, "big")))
        self.sequence += 1
        return head + self.aead.encrypt(nonce, inner, head)


class RawTls13Client:
    """Connected and handshaken; ``key_updates(n)`` are n sealed KeyUpdate records."""

    def __init__(self, port: int, ca_file: Path, server_name: str, timeout: float,
                 receive_buffer: Optional[int] = None):
        """``receive_buffer``: SO_RCVBUF set before the connect, so the window stays that
        small (a client that barely reads fills the server's socket sooner)."""
        with tempfile.TemporaryDirectory(prefix="v2sync-keylog-") as folder:
            keylog = Path(folder) / "keys"
            context = ssl.create_default_context(cafile=str(ca_file))
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.keylog_filename = str(keylog)
            self.sock = connect_loopback(port, timeout, receive_buffer)
            try:
                suite = self._handshake(context, server_name)
                secret = self._client_secret(keylog.read_text())
            except BaseException:
                self.sock.close()
                raise
        self._sender = _Sender(secret, suite)

    def _handshake(self, context: ssl.SSLContext, server_name: str) -> str:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
        for _ in range(MAX_HANDSHAKE_READS):
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(outgoing.read())
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed in the handshake") from None
                incoming.write(data)
        self.sock.sendall(outgoing.read())  # the client's Finished
        cipher = tls.cipher()
        assert cipher is not None
        return cipher[0]

    @staticmethod
    def _client_secret(keylog: str) -> bytes:
        for line in keylog.splitlines():
            fields = line.split(" ")  # comment lines ("# SSL/TLS secrets log file") too
            if len(fields) == 3 and fields[0] == "CLIENT_TRAFFIC_SECRET_0":
                return bytes.fromhex(fields[2])
        raise AssertionError("no CLIENT_TRAFFIC_SECRET_0 in the keylog")

    def key_updates(self, count: int, requested: bool = False) -> bytes:
        """``count`` KeyUpdate records, each under the keys the one before it moved to;
        ``requested``: each asks the peer to update its own keys too (an answer each)."""
        records = []
        request = UPDATE_REQUESTED if requested else UPDATE_NOT_REQUESTED
        message = bytes([_KEY_UPDATE]) + (1).to_bytes(3, "big") + bytes([request])
        for _ in range(count):
            records.append(self._sender.seal(_HANDSHAKE, message))
            self._sender.next_secret()
        return b"".join(records)

    def data(self, payload: bytes) -> bytes:
        return self._sender.seal(_APPLICATION_DATA, payload)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawTls13Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
