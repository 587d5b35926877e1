"""TLS names and trust, v2ray 4.34 against v2sync on the same configs.

- A client told to trust a listed certificate (``usage: verify``, no system roots) trusts it
  as Go does, as an anchor, even when it is the server's own certificate and not a CA.
- A ``serverName`` with a trailing dot connects: Go sends and checks it without the dot.
- A server picks its certificate by SNI as Go's ``BuildNameToCertificate`` indexes them:
  by common name as well as by subjectAltName.
- A client without session resumption offers no session ticket extension, as Go's does.
"""
from __future__ import annotations

import hashlib
import socket
import ssl
import struct
from pathlib import Path
from typing import Any, Dict, List

import pytest

from support.certs import SERVER_NAME, Pki, make_pki
from support.peers import _TcpServer, free_port
from support.procs import V2RayProcess, V2SyncProcess
from test_tls_suites_interop import _read_record

TIMEOUT = 10.0
CN_NAME = "cn-only.test"
SESSION_TICKET_EXTENSION = 35


def client_config(entry: int, target: int, tls: Dict[str, Any]) -> Dict[str, Any]:
    """dokodemo-door on ``entry`` -> freedom over TLS to 127.0.0.1:``target``."""
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"listen": "127.0.0.1", "port": entry, "protocol": "dokodemo-door",
                          "settings": {"address": "127.0.0.1", "port": 9, "network": "tcp"}}],
            "outbounds": [{"protocol": "freedom", "settings": {"redirect": f"127.0.0.1:{target}"},
                           "streamSettings": {"security": "tls", "tlsSettings": tls}}]}


class TlsEcho(_TcpServer):
    """A TLS server (the test PKI's leaf) echoing each connection's first bytes."""

    def __init__(self, pki: Pki):
        super().__init__("tls-echo", "127.0.0.1", max_connections=8, timeout=TIMEOUT)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(pki.cert_file), str(pki.key_file))

    def handle(self, conn: socket.socket) -> None:
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(tls.recv(64))
        except ssl.SSLError:
            pass  # a client that refused the certificate


def round_trip(process_class: Any, pki: Pki, tls: Dict[str, Any]) -> bool:
    entry = free_port()
    with TlsEcho(pki) as server, process_class(client_config(entry, server.port, tls)), \
            socket.create_connection(("127.0.0.1", entry), TIMEOUT) as app:
        app.settimeout(TIMEOUT)
        app.sendall(b"ping")
        try:
            return app.recv(4) == b"ping"
        except OSError:
            return False


@pytest.mark.parametrize("case", ["the-leaf-itself-trusted", "trailing-dot-name"])
def test_client_trust_and_names_as_4_34(case: str, pki: Pki, v2ray_bin: str) -> None:
    if case == "the-leaf-itself-trusted":
        tls = {"serverName": SERVER_NAME, "disableSystemRoot": True,
               "certificates": [{"certificateFile": str(pki.cert_file), "usage": "verify"}]}
    else:
        tls = pki.client_tls(server_name=SERVER_NAME + ".")
    assert (round_trip(V2SyncProcess, pki, tls), round_trip(V2RayProcess, pki, tls)) == \
        (True, True)


def server_config(port: int, pkis: List[Pki]) -> Dict[str, Any]:
    certificates = [{"certificateFile": str(p.cert_file), "keyFile": str(p.key_file)}
                    for p in pkis]
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"listen": "127.0.0.1", "port": port, "protocol": "dokodemo-door",
                          "settings": {"address": "127.0.0.1", "port": 9, "network": "tcp"},
                          "streamSettings": {"security": "tls",
                                             "tlsSettings": {"certificates": certificates}}}],
            "outbounds": [{"protocol": "freedom"}]}


def served_certificate(process_class: Any, pkis: List[Pki], name: str) -> str:
    port = free_port()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with process_class(server_config(port, pkis)), \
            socket.create_connection(("127.0.0.1", port), TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


@pytest.fixture(scope="module")
def cn_only(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("cn-only"), names=(CN_NAME,), dns_sans=False)


@pytest.mark.parametrize("name", [CN_NAME, SERVER_NAME])
def test_server_picks_by_common_name_too_as_4_34(name: str, pki: Pki, cn_only: Pki,
                                                 v2ray_bin: str) -> None:
    ours = served_certificate(V2SyncProcess, [pki, cn_only], name)
    assert ours == served_certificate(V2RayProcess, [pki, cn_only], name)
    expected = cn_only if name == CN_NAME else pki
    der = ssl.PEM_cert_to_DER_cert(Path(expected.cert_file).read_text())
    assert ours == hashlib.sha256(der).hexdigest()


def hello_extensions(hello: bytes) -> List[int]:
    """The extension types of one ClientHello record, in order."""
    pos = 5 + 4 + 2 + 32
    pos += 1 + hello[pos]
    pos += 2 + struct.unpack_from(">H", hello, pos)[0]  # cipher suites
    pos += 1 + hello[pos]  # compression methods
    end = pos + 2 + struct.unpack_from(">H", hello, pos)[0]
    pos += 2
    types = []
    while pos + 4 <= end:
        kind, length = struct.unpack_from(">HH", hello, pos)
        types.append(kind)
        pos += 4 + length
    return types


def captured_hello(process_class: Any, pki: Pki) -> bytes:
    entry = free_port()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        target = listener.getsockname()[1]
        with process_class(client_config(entry, target, pki.client_tls())), \
                socket.create_connection(("127.0.0.1", entry), TIMEOUT) as app:
            app.sendall(b"x")
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                return _read_record(conn)


def test_no_session_ticket_offered_without_resumption_as_4_34(pki: Pki, v2ray_bin: str) -> None:
    ours = hello_extensions(captured_hello(V2SyncProcess, pki))
    theirs = hello_extensions(captured_hello(V2RayProcess, pki))
    assert SESSION_TICKET_EXTENSION not in ours and SESSION_TICKET_EXTENSION not in theirs
    assert 0 in ours and 0 in theirs  # both send SNI: the parse found the extensions
