"""A Mux.cool server whose client vanishes, and one whose route refuses a new stream, compared
with v2ray 4.34 as the server (a v2ray client in both cases, as the review that found them).

    app -> [v2ray client: socks -> vmess, mux on] -> [server: vmess in -> freedom] -> origin

- The client is killed while two streams are open, one idle and one downloading: 4.34 ends
  the idle stream's upstream at once (every sub-connection runs in the mux connection's
  context). v2sync's did so only at the server's downlinkOnly, here 30 s; an outbound relay
  now aborts its upstream when its link is interrupted (``relay.aborted_with``).
- A stream routed to a blackhole with its first data in the New frame: 4.34 ends it with
  the Error option and the app sees EOF at once; v2sync sent a plain End, and the client's
  stream waited out its uplinkOnly, here 30 s.
The waits below are bounds far under those 30 s, not timings."""
from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Dict, Iterator, List

import pytest

from scenarios.mux_helpers import start_mux_chain
from vmess_helpers import open_tunnel

LONG = 30  # the policy's uplinkOnly and downlinkOnly, on both processes
POLICY = {"levels": {"0": {"uplinkOnly": LONG, "downlinkOnly": LONG}}}
BOUND = 10.0  # an end that comes from the kill, not from a 30 s timer
IO_TIMEOUT = 5.0
SERVERS = ["v2ray", "v2sync"]


class TaggedOrigin:
    """Accepts connections; each sends its tag (one line) first, then the test drives it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(IO_TIMEOUT)
        self.port = int(self.listener.getsockname()[1])

    def take(self, count: int) -> Dict[bytes, socket.socket]:
        conns: Dict[bytes, socket.socket] = {}
        for _ in range(count):
            conn, _ = self.listener.accept()
            conn.settimeout(IO_TIMEOUT)
            tag = conn.recv(64).strip()
            conns[tag] = conn
        return conns

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def origin() -> Iterator[TaggedOrigin]:
    server = TaggedOrigin()
    yield server
    server.close()


def _flood(conn: socket.socket, stop: threading.Event) -> None:
    """Send until the connection fails or ``stop`` (bounded by the test's own end)."""
    block = b"s" * 16384
    try:
        while not stop.is_set():
            conn.sendall(block)
    except OSError:
        pass  # the proxy ended it: what the test waits for on the other stream


def _ended_within(conn: socket.socket, seconds: float) -> bool:
    conn.settimeout(seconds)
    try:
        return conn.recv(16) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("server", SERVERS)
def test_upstreams_end_when_the_mux_client_vanishes(server: str, v2ray_bin: str,
                                                     origin: TaggedOrigin) -> None:
    chain = start_mux_chain("v2ray", server, policy=POLICY)
    apps: List[socket.socket] = []
    stop = threading.Event()
    try:
        for tag in (b"idle\n", b"send\n"):
            app = open_tunnel(chain.socks_port, ("127.0.0.1", origin.port))
            app.sendall(tag)
            apps.append(app)
        upstreams = origin.take(2)
        flood = threading.Thread(target=_flood, args=(upstreams[b"send"], stop))
        flood.start()
        try:
            os.kill(chain.client.pid, signal.SIGKILL)
            assert _ended_within(upstreams[b"idle"], BOUND), chain.logs()
        finally:
            stop.set()
            flood.join(IO_TIMEOUT + BOUND)
        for conn in upstreams.values():
            conn.close()
    finally:
        for app in apps:
            app.close()
        chain.server.stop(check=server == "v2sync")
        chain.client.stop(check=False)


def _blackholed_server(chain_server_config: dict) -> dict:
    config = dict(chain_server_config)
    config["outbounds"] = [*config["outbounds"], {"tag": "block", "protocol": "blackhole"}]
    config["routing"] = {"rules": [{"type": "field", "domain": ["full:blocked.test"],
                                    "outboundTag": "block"}]}
    return config


@pytest.mark.parametrize("server", SERVERS)
def test_a_refused_new_stream_ends_at_once(server: str, v2ray_bin: str) -> None:
    chain = start_mux_chain("v2ray", server, policy=POLICY,
                            server_config_hook=_blackholed_server)
    try:
        for _ in range(5):  # the first data rides in the New frame in most tries, not all
            with socket.create_connection(("127.0.0.1", chain.socks_port), IO_TIMEOUT) as app:
                app.settimeout(IO_TIMEOUT)
                app.sendall(b"\x05\x01\x00")
                assert app.recv(2) == b"\x05\x00"
                name = b"blocked.test"
                app.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + b"\x00\x50"
                            + b"GET / HTTP/1.1\r\n\r\n")
                reply = app.recv(10)
                assert reply[:2] == b"\x05\x00", reply
                assert _ended_within(app, BOUND), chain.logs()
    finally:
        chain.stop()
