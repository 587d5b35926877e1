"""TLS records that carry no data (KeyUpdate messages) from a client still in its
handshake, against v2sync and 4.34 (found by a review): v2sync decoded them in the thread
that runs every inbound's handshakes, and while they kept coming no other handshake was
answered (4.34: others were served in milliseconds). The records are sealed by the test
(``support.tls13_records``) once Python's ssl has made the TLS 1.3 handshake."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest

from support.certs import SERVER_NAME, Pki
from support.peers import BulkSource, free_port
from support.procs import ConfigProcess, V2RayProcess, V2SyncProcess
from support.tls13_records import RawTls13Client

IO_TIMEOUT = 5.0
FLOOD_SECONDS = 4.0
GREETINGS = 3
GREETING_TIMEOUT = 2.0
FLOOD_RECORDS = 200_000  # ~5.4 MB; answers asked, so each costs the server more
FLOOD_SLICE = 32 * 1024
STALLED_RECORDS = 200_000  # ~5.4 MB: taken whole unless the server stops reading
STALL_SECONDS = 2.0


def config(tls_port: int, plain_port: int, pki: Pki) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "inbounds": [
                {"protocol": "socks", "listen": "127.0.0.1", "port": tls_port,
                 "settings": {"auth": "noauth"},
                 "streamSettings": {"security": "tls", "tlsSettings": pki.server_tls()}},
                {"protocol": "socks", "listen": "127.0.0.1", "port": plain_port,
                 "settings": {"auth": "noauth"}}],
            "outbounds": [{"protocol": "freedom"}]}


@pytest.fixture(params=["v2ray", "v2sync"])
def ports(request: pytest.FixtureRequest, pki: Pki, v2ray_bin: str) -> Iterator[Dict[str, int]]:
    found = {"tls": free_port(), "plain": free_port()}
    conf = config(found["tls"], found["plain"], pki)
    process: ConfigProcess = (V2RayProcess(conf, binary=v2ray_bin)
                              if request.param == "v2ray" else V2SyncProcess(conf))
    with process:
        yield found


def test_the_record_helper_speaks_tls_the_server_takes(ports: Dict[str, int],
                                                       pki: Pki) -> None:
    """The control: KeyUpdates, then a SOCKS greeting under the keys they moved to, are
    answered and the connection stays (wrong keys would get an alert and a close)."""
    with RawTls13Client(ports["tls"], pki.ca_file, SERVER_NAME, IO_TIMEOUT) as client:
        client.sock.sendall(client.key_updates(50) + client.data(b"\x05\x01\x00"))
        assert client.sock.recv(65536)  # NewSessionTickets, the answer: records
        client.sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            while client.sock.recv(65536):
                pass


def flood(client: RawTls13Client, records: bytes, sent: List[int],
          timeout: float = FLOOD_SECONDS) -> str:
    """Sealed beforehand, sent as fast as the server takes them, in slices, each bounded
    by the socket's timeout: the server's work per record is then all that paces it.
    "sent", "timeout" (the server stopped taking them) or "closed"."""
    client.sock.settimeout(timeout)
    try:
        for start in range(0, len(records), FLOOD_SLICE):
            client.sock.sendall(records[start:start + FLOOD_SLICE])
            sent[0] = start + FLOOD_SLICE
    except socket.timeout:
        return "timeout"
    except OSError:
        return "closed"
    return "sent"


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the server ended it already


def greeted(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), GREETING_TIMEOUT) as sock:
        sock.sendall(b"\x05\x01\x00")
        try:
            return sock.recv(2)
        except socket.timeout:
            return b"(no answer)"


def test_a_key_update_flood_leaves_other_handshakes_answered(ports: Dict[str, int],
                                                             pki: Pki) -> None:
    sent = [0]
    with RawTls13Client(ports["tls"], pki.ca_file, SERVER_NAME, IO_TIMEOUT) as client:
        records = client.key_updates(FLOOD_RECORDS, requested=True)
        thread = threading.Thread(target=flood, args=(client, records, sent), daemon=True)
        thread.start()
        try:
            time.sleep(0.3)
            answers = [greeted(ports["plain"]) for _ in range(GREETINGS)]
        finally:
            _shut(client.sock)  # ends the flood's send at once
            thread.join(FLOOD_SECONDS + 1)
    assert answers == [b"\x05\x00"] * GREETINGS


def test_a_key_update_flood_over_a_stalled_download_stops_at_the_socket(pki: Pki) -> None:
    """The client never reads its download, so the server's writer is stuck; then it asks
    for KeyUpdates. Go's server takes the write lock to answer one, so the flood stops at
    the client's own socket (4.34 took ~130,000 first, its answers filling the socket's
    buffers); v2sync's answers queued without bound (+22 MiB; found by a review), and it
    took them all. v2sync alone: the records 4.34 takes first would take long to seal."""
    tls_port = free_port()
    with V2SyncProcess(config(tls_port, free_port(), pki)), \
            BulkSource(1 << 30, timeout=FLOOD_SECONDS * 3) as download, \
            RawTls13Client(tls_port, pki.ca_file, SERVER_NAME, IO_TIMEOUT) as client:
        host, port = download.address
        connect = b"\x05\x01\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big")
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sock.sendall(client.data(b"\x05\x01\x00" + connect))  # never read again
        time.sleep(1)  # the download has filled every buffer on the way by now
        sent = [0]
        try:
            outcome = flood(client, client.key_updates(STALLED_RECORDS, requested=True), sent,
                            STALL_SECONDS)
        finally:
            client.close()  # a reset (its download unread): the relay ends
    assert outcome == "timeout"  # the server stopped taking them, as 4.34 does
