"""HTTP CONNECT over HTTP/2 (issue 17, parts 4, 6 and 7).

- The HTTP outbound over TLS that negotiates h2 tunnels over HTTP/2 CONNECT, one cached
  connection per server, as 4.34 does: against an in-test HTTP/2 CONNECT proxy on ``h2``
  (4.34's HTTP inbound speaks HTTP/1 only, so no v2ray can be that peer).
- Beyond 4.34: v2sync's HTTP inbound serves HTTP/2 CONNECT, so the real v2ray 4.34's HTTP
  outbound over TLS works against it, where against v2ray's own HTTP inbound it fails (the
  control case below shows that failure).

    client -> [v2sync|v2ray: socks in -> http out over tls] -> [h2 proxy | v2sync | v2ray
              http in over tls -> freedom] -> in-test XOR echo
"""
from __future__ import annotations

import os
import socket
import time
from typing import Iterator, List, Optional

import pytest
from scenarios.test_chain_outbounds import _tunnel_answer
from scenarios.vmess_helpers import (assert_same_bytes, exchange, exchange_in_parallel,
                                     make_process, open_tunnel, recv_exactly)
from support.certs import Pki
from support.h2_connect import H2ConnectProxy
from support.peers import MIB, XOR_C, TcpEchoServer, free_port, xor_bytes

USER, PASSWORD = "h2-user", "h2-pass"
PARALLEL = 4
PARALLEL_BYTES = 256 * 1024
SEQUENTIAL = 3
LOG = {"loglevel": "info", "access": "none"}


def http_over_tls_client(client: str, server_port: int, pki: Pki,
                         password: str = PASSWORD, policy: Optional[dict] = None) -> "tuple":
    socks_port = free_port()
    outbound = {"protocol": "http",
                "settings": {"servers": [{"address": "127.0.0.1", "port": server_port,
                                          "users": [{"user": USER, "pass": password}]}]},
                "streamSettings": {"security": "tls", "tlsSettings": pki.client_tls()}}
    socks_in = {"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1",
                "port": socks_port, "settings": {}}
    config = {"log": LOG, "inbounds": [socks_in], "outbounds": [outbound]}
    if policy is not None:
        config["policy"] = {"levels": {"0": policy}}
    process = make_process(client, config).start()
    return process, socks_port


def http_over_tls_server(server: str, pki: Pki) -> "tuple":
    port = free_port()
    inbound = {"tag": "http-in", "protocol": "http", "listen": "127.0.0.1", "port": port,
               "settings": {"accounts": [{"user": USER, "pass": PASSWORD}]},
               "streamSettings": {"security": "tls", "tlsSettings": pki.server_tls()}}
    process = make_process(server, {"log": LOG, "inbounds": [inbound],
                                    "outbounds": [{"protocol": "freedom"}]}).start()
    return process, port


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpEchoServer]:
    with TcpEchoServer(xor=XOR_C, timeout=60.0) as server:
        yield server


def _exchange_all(socks_port: int, echo: TcpEchoServer, logs) -> None:
    payloads = [os.urandom(PARALLEL_BYTES) for _ in range(PARALLEL)]
    results = exchange_in_parallel(socks_port, echo.address, payloads, "h2-parallel")
    for index, (received, payload) in enumerate(zip(results, payloads)):
        assert_same_bytes(received, xor_bytes(payload), f"connection {index}\n{logs()}")


def test_outbound_tunnels_over_one_cached_http2_connection(pki: Pki,
                                                           echo: TcpEchoServer) -> None:
    with H2ConnectProxy(str(pki.cert_file), str(pki.key_file), (USER, PASSWORD)) as proxy:
        client, socks_port = http_over_tls_client("v2sync", proxy.port, pki)
        try:
            for _ in range(SEQUENTIAL):  # one after another: the first connection is reused
                payload = os.urandom(64 * 1024)
                with open_tunnel(socks_port, echo.address) as sock:
                    assert_same_bytes(exchange(sock, payload), xor_bytes(payload),
                                      client.log_tail())
            assert (proxy.connections, proxy.streams) == (1, SEQUENTIAL), client.log_tail()
            _exchange_all(socks_port, echo, client.log_tail)
            payload = os.urandom(2 * MIB)
            with open_tunnel(socks_port, echo.address) as sock:
                assert_same_bytes(exchange(sock, payload), xor_bytes(payload), client.log_tail())
            assert proxy.refused == 0
        finally:
            client.stop()


def connect_headers(client: str, pki: Pki, origin: TcpEchoServer) -> list:
    with H2ConnectProxy(str(pki.cert_file), str(pki.key_file), (USER, PASSWORD)) as proxy:
        process, socks_port = http_over_tls_client(client, proxy.port, pki)
        try:
            with open_tunnel(socks_port, origin.address) as sock:
                payload = b"headers"
                assert_same_bytes(exchange(sock, payload), xor_bytes(payload), "")
        finally:
            process.stop(check=client == "v2sync")
    return proxy.requests


def test_outbound_connect_headers_as_4_34_sends_them(pki: Pki, echo: TcpEchoServer,
                                                     v2ray_bin: str) -> None:
    """Go's http2 transport: the pseudo-headers, the request's own, accept-encoding, then
    its user-agent."""
    ours = connect_headers("v2sync", pki, echo)
    assert ours == connect_headers("v2ray", pki, echo)
    assert [name for name, _ in ours[0]] == [":authority", ":method", "proxy-authorization",
                                             "accept-encoding", "user-agent"]


def refused_tries(client: str, pki: Pki) -> int:
    with H2ConnectProxy(str(pki.cert_file), str(pki.key_file), (USER, PASSWORD)) as proxy, \
            TcpEchoServer(xor=XOR_C) as origin:
        process, socks_port = http_over_tls_client(client, proxy.port, pki, password="wrong")
        try:
            assert _tunnel_answer(socks_port, origin.address, b"hello") is None
            assert origin.accepted == 0
        finally:
            process.stop(check=client == "v2sync")
        return proxy.refused


def test_outbound_refused_by_the_http2_proxy_fails_the_link_as_4_34(pki: Pki,
                                                                     v2ray_bin: str) -> None:
    """4.34's retry wraps the HTTP/2 CONNECT: a refusal is a failed try, and the next goes
    to the next server (v2sync made one try outside the retry; found by a review)."""
    tries = refused_tries("v2sync", pki)
    assert tries == refused_tries("v2ray", pki) == 5


@pytest.mark.parametrize("client", ["v2ray", "v2sync"])
def test_inbound_serves_http2_connect(client: str, pki: Pki, echo: TcpEchoServer) -> None:
    server, port = http_over_tls_server("v2sync", pki)
    try:
        process, socks_port = http_over_tls_client(client, port, pki)
        try:
            def logs() -> str:
                return f"{process.log_tail()}\n--- server ---\n{server.log_tail()}"
            _exchange_all(socks_port, echo, logs)
            assert "HTTP/2 connection from" in server.log_text(), logs()
        finally:
            process.stop(check=client == "v2sync")
    finally:
        server.stop()


def test_control_v2ray_http_outbound_over_tls_fails_against_v2ray(pki: Pki) -> None:
    """The measured fact behind part 7: 4.34 against itself negotiates h2 and fails."""
    server, port = http_over_tls_server("v2ray", pki)
    try:
        process, socks_port = http_over_tls_client("v2ray", port, pki)
        try:
            with TcpEchoServer(xor=XOR_C) as origin:
                assert _tunnel_answer(socks_port, origin.address, b"hello") is None
                assert origin.accepted == 0
        finally:
            process.stop(check=False)
    finally:
        server.stop(check=False)


def test_inbound_bounds_the_streams_of_one_connection(pki: Pki, echo: TcpEchoServer) -> None:
    """The HTTP/2 inbound advertises a stream limit (each CONNECT stream holds threads), and a
    client that opens a stream past it has its connection closed: one TLS connection could
    otherwise start thousands of tunnels (found by a hostile-input review)."""
    import socket
    import ssl

    import h2.connection
    import h2.events
    import h2.settings

    server, port = http_over_tls_server("v2sync", pki)
    try:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), 5)
        with context.wrap_socket(raw, server_hostname="v2sync.test") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            client = h2.connection.H2Connection()
            client.initiate_connection()
            tls.sendall(client.data_to_send())
            limit = None
            while limit is None:
                for event in client.receive_data(tls.recv(65536)):
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        setting = event.changed_settings.get(
                            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                        limit = setting.new_value if setting else -1
            assert 0 < limit <= 256  # h2's default is 100, Go's server's 250
            # This client ignores the limit (h2 would refuse to open the extra stream).
            client.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = limit + 10
            client.remote_settings.acknowledge()
            host, echo_port = echo.address
            for _ in range(limit + 1):  # one past the limit; none gets an answer first
                stream = client.get_next_available_stream_id()
                client.send_headers(stream, [(":method", "CONNECT"),
                                             (":authority", f"{host}:{echo_port}")])
            tls.sendall(client.data_to_send())
            tls.settimeout(5)
            ended = False
            for _ in range(1000):  # until the server closes the connection (bounded)
                try:
                    data = tls.recv(65536)
                except (ssl.SSLError, ConnectionResetError):
                    ended = True
                    break
                if not data:
                    ended = True
                    break
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        ended = True
                if ended:
                    break
            assert ended
    finally:
        server.stop()


def test_a_server_that_opens_no_window_fails_the_first_payload_in_handshake_time(
        pki: Pki) -> None:
    """The first payload goes with the CONNECT, before the relay's timer: a server that
    grants no flow-control window held the tunnel (its threads, its stream) for good
    (found by a review; 4.34 ended it at connIdle). Each try now ends with the handshake's
    time, and the retry gives up."""
    with H2ConnectProxy(str(pki.cert_file), str(pki.key_file), (USER, PASSWORD),
                        stream_window=0) as proxy, TcpEchoServer(xor=XOR_C) as origin:
        process, socks_port = http_over_tls_client("v2sync", proxy.port, pki,
                                                   policy={"handshake": 1})
        try:
            with open_tunnel(socks_port, origin.address) as sock:
                sock.sendall(b"first payload")
                process.wait_for_log("no flow-control window in time", timeout=10)
                process.wait_for_log("failed to find an available destination", timeout=20)
        finally:
            process.stop()


@pytest.mark.parametrize("client", ["v2sync", "v2ray"])
def test_a_graceful_goaway_lets_the_live_tunnel_go_on_as_in_4_34(client: str, pki: Pki,
                                                                  echo: TcpEchoServer) -> None:
    """A server draining (nginx's or Go's reload) sends GOAWAY with NO_ERROR naming the
    streams it took, and serves them on; v2sync cut every tunnel (found by a review)."""
    with H2ConnectProxy(str(pki.cert_file), str(pki.key_file), (USER, PASSWORD),
                        goaway_on_data=True) as proxy:
        process, socks_port = http_over_tls_client(client, proxy.port, pki)
        try:
            with open_tunnel(socks_port, echo.address) as sock:
                for payload in (b"first", b"after the goaway", b"and again"):
                    assert_same_bytes(exchange(sock, payload), xor_bytes(payload),
                                      process.log_tail())
            assert proxy.goaways == 1
        finally:
            process.stop(check=client == "v2sync")


STALLED_DOWNLOADS = 20  # 16 held a 16 MiB connection window whole (1 MiB a stream)
STALLED_BYTES = 16 * MIB
STALL_SETTLE = 10.0  # each fills its client's socket (MiBs on loopback), then its window
ANSWER_WITHIN = 2.0


class BulkOrEcho(TcpEchoServer):
    """A connection whose first 5 bytes are ``BULK\n`` gets STALLED_BYTES as fast as it
    takes them; any other is echoed."""

    def handle(self, conn: socket.socket) -> None:
        head = recv_exactly(conn, 5)
        if head != b"BULK\n":
            conn.sendall(head)
            super().handle(conn)
            return
        block = bytes(64 * 1024)
        for _ in range(STALLED_BYTES // len(block)):
            if self.stopping.is_set():
                return
            conn.sendall(block)


def test_downloads_nobody_reads_keep_no_other_tunnel_on_the_connection_waiting(
        pki: Pki) -> None:
    """The outbound's one HTTP/2 connection carries every user's tunnels: a download its
    user stops reading keeps its stream's window of data unacknowledged, and 16 of them
    used up a 16 MiB connection window, so another user's tunnel got nothing more (4.34,
    Go's transport: a 1 GiB connection window; found by a review)."""
    with H2ConnectProxy(str(pki.cert_file), str(pki.key_file), (USER, PASSWORD)) as proxy, \
            BulkOrEcho(max_connections=STALLED_DOWNLOADS + 4, timeout=30.0) as origin:
        client, socks_port = http_over_tls_client("v2sync", proxy.port, pki)
        stalled: List[socket.socket] = []
        try:
            assert _echo_time(socks_port, origin) < ANSWER_WITHIN, client.log_tail()
            for _ in range(STALLED_DOWNLOADS):  # never read
                stalled.append(open_tunnel(socks_port, origin.address, receive_buffer=4096))
                stalled[-1].sendall(b"BULK\n")
            time.sleep(STALL_SETTLE)
            assert _echo_time(socks_port, origin) < ANSWER_WITHIN, client.log_tail()
            assert proxy.connections == 1  # the same connection carried them all
        finally:
            for sock in stalled:
                sock.close()
            client.stop()


def _echo_time(socks_port: int, origin: TcpEchoServer) -> float:
    started = time.monotonic()
    with open_tunnel(socks_port, origin.address) as sock:
        sock.sendall(b"ECHO\nhello")
        assert recv_exactly(sock, 10, ANSWER_WITHIN * 2) == b"ECHO\nhello"
    return time.monotonic() - started
