"""One client that floods KeyUpdates and never reads does not stop the process's timers.

TLS 1.3 KeyUpdates that ask for an answer carry no data: a relay's reader answers each,
and once the client's window and the server's socket are full it waits in its send,
holding the TLS layer's sending side (as Go's ``handleKeyUpdate`` takes the write lock).
The connection's idle timer then ends it from the timer wheel's one thread. Over
WebSocket the abort said goodbye with a close frame, over the HTTP header disguise with
the 400 of an unanswered request, both through a TLS write that waited for that sending
side: for as long as the client liked, and every other connection's timer with it (found
by a review; 4.34 was unaffected). The goodbye is now sent only if it goes at once.

Measured from outside: a second, plain connection ends by its own idle timer on time.
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from support.certs import SERVER_NAME, Pki, make_pki
from support.peers import TcpEchoServer, free_port
from support.procs import V2SyncProcess
from support.tls13_records import RawTls13Client

PLAIN_IDLE = 2     # level 1: the plain door's connections
# Level 0, the TLS door's: its abort must come after the flood is sealed and has filled
# both sockets (measured: 10-14 s on 2 busy cores).
ATTACK_IDLE = 20
STALLED = 1.0  # the flood made no progress this long before that abort
FLOODED = 4 * 1024 * 1024
END_WITHIN = PLAIN_IDLE + 2.0
WAIT_CAP = 10.0
RECEIVE_BUFFER = 4096
KEY_UPDATES = 220_000  # ~5.9 MB: more answers than the server's socket takes
SLICE = 32 * 1024
WS_UPGRADE = (b"GET / HTTP/1.1\r\nHost: v2sync.test\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
HTTP_HEAD = b"GET / HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: x\r\n\r\n"
LAYERS = {
    "ws": ({"network": "ws"}, WS_UPGRADE),
    "http-header": ({"network": "tcp", "tcpSettings": {"header": {"type": "http"}}},
                    HTTP_HEAD),
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


def _config(pki: Pki, layer: Dict[str, Any], echo_port: int, tls_port: int,
            plain_port: int) -> Dict[str, Any]:
    door = {"address": "127.0.0.1", "port": echo_port, "network": "tcp"}
    return {
        "log": {"loglevel": "warning"},
        "policy": {"levels": {"0": {"connIdle": ATTACK_IDLE}, "1": {"connIdle": PLAIN_IDLE}}},
        "inbounds": [
            {"tag": "tls", "protocol": "dokodemo-door", "listen": "127.0.0.1", "port": tls_port,
             "settings": door,
             "streamSettings": {**layer, "security": "tls", "tlsSettings": pki.server_tls()}},
            {"tag": "plain", "protocol": "dokodemo-door", "listen": "127.0.0.1",
             "port": plain_port,
             "settings": {**door, "userLevel": 1}}],
        "outbounds": [{"protocol": "freedom"}]}


def _idle_end(port: int) -> float:
    """Seconds from a plain connection's last byte to its end by the idle timer."""
    with socket.create_connection(("127.0.0.1", port), 3) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        started = time.monotonic()
        sock.settimeout(WAIT_CAP)
        try:
            assert sock.recv(1) == b""
        except socket.timeout:
            return float("inf")
        return time.monotonic() - started


def _flood(client: RawTls13Client, progress: List[float]) -> None:
    """KEY_UPDATES, sealed (seconds) then sent, until the server stops reading (a send
    timeout) or closes; ``progress`` gets the time of each slice sent."""
    records = client.key_updates(KEY_UPDATES, requested=True)
    client.sock.settimeout(ATTACK_IDLE)
    try:
        for start in range(0, len(records), SLICE):
            client.sock.sendall(records[start:start + SLICE])
            progress.append(time.monotonic())
    except OSError:
        pass


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_keyupdate_flood_that_is_never_read_holds_no_other_timer(
        pki: Pki, tcp_echo: TcpEchoServer, layer: str) -> None:
    settings, first_bytes = LAYERS[layer]
    tls_port, plain_port = free_port(), free_port()
    with V2SyncProcess(_config(pki, settings, tcp_echo.port, tls_port, plain_port)):
        with RawTls13Client(tls_port, pki.ca_file, SERVER_NAME, 5.0,
                            receive_buffer=RECEIVE_BUFFER) as client:
            client.sock.sendall(client.data(first_bytes))  # the answer is never read
            started = time.monotonic()
            progress: List[float] = []
            flood = threading.Thread(target=_flood, args=(client, progress), daemon=True)
            flood.start()
            # Past the attacking connection's own idle end: its abort has run.
            abort_at = started + ATTACK_IDLE
            time.sleep(max(0.0, abort_at + 1.0 - time.monotonic()))
            # The server took the flood (its answers are more than both sockets hold) and
            # its reader was waiting in its send before that abort came.
            assert len(progress) * SLICE >= FLOODED and progress[-1] < abort_at - STALLED, \
                (len(progress), progress[-1:], started)
            assert _idle_end(plain_port) < END_WITHIN
        flood.join(5.0)
        assert not flood.is_alive()
