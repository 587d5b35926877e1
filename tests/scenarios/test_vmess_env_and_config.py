"""VMess details compared with v2ray 4.34: the client's environment flags, and config checks.

- ``V2RAY_VMESS_AEAD_DISABLED=true`` makes a client send the legacy header for an alterId 0
  user: its first 16 bytes are then no AuthID sealed for the user, from either client.
- Two clients whose emails differ only in case are refused, as 4.34's AddUser refuses them;
  a user's level is a uint32, as 4.34's protocol.User has it.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from scenarios.helpers_scenarios import (CMD_CONNECT, recv_exact, socks5_greet,
                                         socks5_request)
from support.peers import _TcpServer, free_port
from support.procs import REPO_ROOT, V2RayProcess, V2SyncProcess, find_v2ray
from v2sync.common.crypto.stream import AesBlock
from v2sync.proxy.vmess.aead import auth_id_time
from v2sync.proxy.vmess.config import parse_user
from vmess_helpers import client_config, vmess_client_entry, vmess_inbound

IO_TIMEOUT = 5.0
AUTH_BYTES = 16


class FirstBytes(_TcpServer):
    """Keeps the first 16 bytes of each connection: an AEAD AuthID or a legacy auth hash."""

    def __init__(self) -> None:
        super().__init__("vmess-first-bytes", "127.0.0.1", max_connections=4, timeout=IO_TIMEOUT)
        self.firsts: List[bytes] = []

    def handle(self, conn: socket.socket) -> None:
        self.firsts.append(recv_exact(conn, AUTH_BYTES))

    def first(self) -> bytes:
        deadline = time.monotonic() + IO_TIMEOUT
        while not self.firsts and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.firsts, "the client sent no header"
        return self.firsts[-1]


def sends_aead(client_class: Any, env: Dict[str, str]) -> bool:
    """Whether the client's header opens with an AuthID sealed for its user."""
    user = parse_user(vmess_client_entry(), "user")
    with FirstBytes() as server:
        socks_port = free_port()
        with client_class(client_config(socks_port, server.port, "aes-128-gcm", 0), env=env), \
                socket.create_connection(("127.0.0.1", socks_port), IO_TIMEOUT) as app:
            app.settimeout(IO_TIMEOUT)
            socks5_greet(app)
            socks5_request(app, CMD_CONNECT, "127.0.0.1", 9)
            app.sendall(b"payload")
            first = server.first()
    return auth_id_time(AesBlock(user.auth_id_key), first) is not None


@pytest.mark.parametrize("client_class", [V2SyncProcess, V2RayProcess])
def test_aead_disabled_sends_the_legacy_header_as_4_34(client_class, v2ray_bin: str) -> None:
    assert sends_aead(client_class, {})
    assert not sends_aead(client_class, {"V2RAY_VMESS_AEAD_DISABLED": "true"})


def check(implementation: str, doc: Dict[str, Any], tmp_path: Path) -> bool:
    path = tmp_path / f"{implementation}.json"
    path.write_text(json.dumps(doc))
    if implementation == "v2ray":
        command = [find_v2ray() or "v2ray", "-test", "-config", str(path)]
    else:
        command = [sys.executable, "-m", "v2sync", "test", "-c", str(path)]
    done = subprocess.run(command, capture_output=True, timeout=30,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    return done.returncode == 0


@pytest.mark.parametrize("clients, accepted", [
    ([vmess_client_entry(email="a@x"), vmess_client_entry(email="A@x")], False),
    ([{**vmess_client_entry(email="a@x"), "level": 300}], True),
])
def test_vmess_clients_are_checked_as_4_34(clients, accepted: bool, tmp_path: Path,
                                           v2ray_bin: str) -> None:
    doc = {"inbounds": [vmess_inbound(clients, port=free_port())],
           "outbounds": [{"protocol": "freedom"}]}
    assert (check("v2ray", doc, tmp_path), check("v2sync", doc, tmp_path)) == (accepted, accepted)
