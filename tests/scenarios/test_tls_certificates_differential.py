"""Certificate entries 4.34 serves although they are odd, served by v2sync alike (found by a
TLS review; v2sync refused to start on both):

- a ``usage`` 4.34 does not know is read as encipherment (``TLSCertConfig.Build``);
- a pair whose key is not its certificate's is skipped with a warning ("ignoring invalid
  X509 key pair"), and the next pair serves.

    client -TLS-> [socks inbound over TLS -> freedom]: the greeting's answer comes back.
"""
from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from support.certs import SERVER_NAME, Pki, make_pki
from support.peers import free_port
from support.procs import V2RayProcess, V2SyncProcess

IO_TIMEOUT = 5.0


def config(port: int, certificates: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": port,
                          "settings": {"auth": "noauth"},
                          "streamSettings": {"security": "tls",
                                             "tlsSettings": {"certificates": certificates}}}],
            "outbounds": [{"protocol": "freedom"}]}


def greeting_answer(port: int, ca_file: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca_file))
    raw = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT)
    with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
        tls.sendall(b"\x05\x01\x00")
        return tls.recv(2)


@pytest.mark.parametrize("case", ["unknown-usage", "first-pair-mismatched"])
def test_odd_certificate_entries_serve_as_in_4_34(case: str, v2ray_bin: str,
                                                  tmp_path: Path) -> None:
    good, other = make_pki(tmp_path / "good"), make_pki(tmp_path / "other")
    pair = {"certificateFile": str(good.cert_file), "keyFile": str(good.key_file)}
    if case == "unknown-usage":
        certificates = [{**pair, "usage": "signing"}]
    else:  # the other CA's certificate with the good key, then the good pair
        certificates = [{"certificateFile": str(other.cert_file),
                         "keyFile": str(good.key_file)}, pair]
    answers = []
    for process_class in (V2RayProcess, V2SyncProcess):
        port = free_port()
        with process_class(config(port, certificates)) as process:
            answers.append(greeting_answer(port, good.ca_file))
        assert case == "unknown-usage" or "ignoring invalid X509 key pair" in process.log_text()
    assert answers == [b"\x05\x00", b"\x05\x00"]


def alpn_and_answer(port: int, ca_file: Path) -> tuple:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT)
    with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
        tls.sendall(b"\x05\x01\x00")
        return tls.selected_alpn_protocol(), tls.recv(2)


def test_an_empty_alpn_name_is_served_as_in_4_34(v2ray_bin: str, tmp_path: Path) -> None:
    """``"alpn": "http/1.1,"`` (a trailing comma: an empty name) is a config 4.34 serves,
    its empty name never chosen; v2sync refused it as an internal error (found by a
    review)."""
    pki = make_pki(tmp_path)
    pair = {"certificateFile": str(pki.cert_file), "keyFile": str(pki.key_file)}
    results = []
    for process_class in (V2RayProcess, V2SyncProcess):
        port = free_port()
        conf = config(port, [pair])
        conf["inbounds"][0]["streamSettings"]["tlsSettings"]["alpn"] = "http/1.1,"
        with process_class(conf):
            results.append(alpn_and_answer(port, pki.ca_file))
    assert results == [("http/1.1", b"\x05\x00")] * 2


class MutualTlsEcho:
    """A TLS server (Python's ssl, OpenSSL) that requires a client certificate signed by
    ``client_ca``, echoes one read and records each client certificate's subject."""

    def __init__(self, server_pki: Pki, client_ca: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(server_pki.cert_file), str(server_pki.key_file))
        self.context.load_verify_locations(str(client_ca))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(IO_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.subjects: List[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "MutualTlsEcho":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        except OSError:
            pass
        self.listener.close()
        self._thread.join(IO_TIMEOUT)

    def _serve(self) -> None:
        for _ in range(ACCEPTS):
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            with raw:
                raw.settimeout(IO_TIMEOUT)
                self._echo(raw)

    def _echo(self, raw: socket.socket) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                peer = tls.getpeercert() or {}
                self.subjects.append(str(dict(x[0] for x in peer.get("subject", ()))))
                tls.sendall(tls.recv(100))
        except (OSError, ssl.SSLError):
            return  # no certificate: the handshake fails and the client sees a close


ACCEPTS = 4


def mutual_client_config(port: int, target: int, server: Pki, client: Pki) -> Dict[str, Any]:
    tls = {"serverName": SERVER_NAME, "disableSystemRoot": True,
           "certificates": [{"certificateFile": str(server.ca_file), "usage": "verify"},
                            {"certificateFile": str(client.cert_file),
                             "keyFile": str(client.key_file)}]}
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"protocol": "dokodemo-door", "listen": "127.0.0.1", "port": port,
                          "settings": {"address": "127.0.0.1", "port": target,
                                       "network": "tcp"}}],
            "outbounds": [{"protocol": "freedom",
                           "streamSettings": {"security": "tls", "tlsSettings": tls}}]}


def echoed(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.sendall(b"mutual")
        try:
            return sock.recv(100)
        except ConnectionResetError:
            return b""


def test_a_listed_key_pair_is_the_client_certificate_as_in_4_34(v2ray_bin: str,
                                                                 tmp_path: Path) -> None:
    """4.34's client sends its listed certificate to a server that asks for one (mutual
    TLS); v2sync's sent none and the server refused it."""
    server, client = make_pki(tmp_path / "server"), make_pki(tmp_path / "client")
    with MutualTlsEcho(server, client.ca_file) as echo:
        for process_class in (V2RayProcess, V2SyncProcess):
            port = free_port()
            with process_class(mutual_client_config(port, echo.port, server, client)):
                assert echoed(port) == b"mutual", process_class.name
    assert len(echo.subjects) == 2 and echo.subjects[0] == echo.subjects[1]


# TLS 1.2 suites offered one at a time (the certificate is ECDSA): Go 1.19's server takes
# CBC with SHA-1 and refuses CBC with SHA-256/384, where the ssl module's default set is
# the other way round.
TLS12_OFFERS = ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA256",
                "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305",
                "ECDHE-ECDSA-AES256-GCM-SHA384"]


def negotiated(port: int, ca_file: Path, suite: str) -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(suite + ":@SECLEVEL=1")
    try:
        with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as raw, \
                context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            return str(tls.cipher()[0])
    except ssl.SSLError as e:
        return f"refused ({e.reason})"


def probed(pki: Pki, probe: Callable[[int], List[str]]) -> Dict[str, List[str]]:
    """``probe(port)`` against a TLS server of 4.34 and one of v2sync, serving ``pki``."""
    pair = {"certificateFile": str(pki.cert_file), "keyFile": str(pki.key_file)}
    seen = {}
    for process_class in (V2RayProcess, V2SyncProcess):
        port = free_port()
        with process_class(config(port, [pair])):
            seen[process_class.name] = probe(port)
    return seen


def test_tls12_suites_are_the_ones_4_34_takes(v2ray_bin: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    seen = probed(pki, lambda port: [negotiated(port, pki.ca_file, s) for s in TLS12_OFFERS])
    assert seen["v2sync"] == seen["v2ray"]
    assert seen["v2ray"][0] == "ECDHE-ECDSA-AES128-SHA" and "refused" in seen["v2ray"][2]


def handshake_with_name(port: int, name: str) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as raw, \
                context.wrap_socket(raw, server_hostname=name):
            return "accepted"
    except ssl.SSLError as e:
        return f"refused ({e.reason})"


def test_an_sni_with_a_trailing_dot_is_refused_as_in_4_34(v2ray_bin: str, tmp_path: Path) -> None:
    """Go's ClientHello parser refuses a server name ending in "." (RFC 6066 §3) with an
    unexpected_message alert; v2sync served its first certificate."""
    seen = probed(make_pki(tmp_path / "pki"), lambda port: [
        handshake_with_name(port, name) for name in (SERVER_NAME + ".", SERVER_NAME)])
    assert seen["v2sync"] == seen["v2ray"]
    assert seen["v2ray"] == ["refused (SSLV3_ALERT_UNEXPECTED_MESSAGE)", "accepted"]  # alert 10
