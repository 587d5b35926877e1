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
from pathlib import Path
from typing import Any, Dict, List

import pytest

from support.certs import SERVER_NAME, make_pki
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
