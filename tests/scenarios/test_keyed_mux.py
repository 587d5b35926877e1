"""VLESS command 3: Mux.cool inside VLESS, against the real v2ray 4.34 both ways.

    SOCKS5 client -> [client: socks -> vless out over TLS, mux on]
                  -> [server: vless in over TLS -> freedom] -> in-test XOR echo

Eight parallel connections must arrive at the server on one VLESS connection (its access
log names the same source for each), and their bytes must come back intact.
"""
from __future__ import annotations

import os
import time

import pytest
from scenarios.keyed_helpers import (client_config, client_outbound, server_config,
                                     server_inbound, stream)
from scenarios.mux_helpers import ACCESS_LINE
from scenarios.vmess_helpers import exchange_in_parallel, make_process
from support.certs import Pki
from support.peers import XOR_C, TcpEchoServer, free_port, xor_bytes

PARALLEL = 8
PAYLOAD_BYTES = 64 * 1024
LOG_WAIT = 5.0


@pytest.mark.parametrize("client, server", [("v2sync", "v2ray"), ("v2ray", "v2sync")])
def test_mux_inside_vless(pki: Pki, client: str, server: str) -> None:
    port, socks_port = free_port(), free_port()
    server_cfg = server_config(server_inbound("vless", port, stream(pki, "tls", server=True)))
    server_cfg["log"] = {"loglevel": "warning"}  # access lines on
    outbound = client_outbound("vless", port, stream(pki, "tls", server=False))
    outbound["mux"] = {"enabled": True, "concurrency": PARALLEL}
    with TcpEchoServer(xor=XOR_C) as echo, make_process(server, server_cfg) as server_process, \
            make_process(client, client_config(socks_port, outbound)):
        payloads = [os.urandom(PAYLOAD_BYTES) for _ in range(PARALLEL)]
        results = exchange_in_parallel(socks_port, echo.address, payloads, "vless-mux")
        assert results == [xor_bytes(p) for p in payloads]
        deadline = time.monotonic() + LOG_WAIT
        while True:
            sources = [m.group(1) for m in ACCESS_LINE.finditer(server_process.log_text())
                       if int(m.group(3)) == echo.port]
            if len(sources) >= PARALLEL or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert len(sources) == PARALLEL and len(set(sources)) == 1, sources
