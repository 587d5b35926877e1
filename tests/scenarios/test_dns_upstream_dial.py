"""The dns outbound dials its TCP upstream outside the lock its abort takes.

An abort comes from the timer wheel's one thread (a session's idle timer). While the dial
ran under the upstream's lock, an upstream that never answers a SYN (a full backlog here;
a firewall that drops, out there) held that thread for the dial's 16 s, and with it every
other timer of the process: another connection's idle timeout fired 15 s late.
"""
from __future__ import annotations

import contextlib
import socket
import time
from typing import Iterator, List, Optional

import dns.message

from scenarios.helpers_scenarios import freedom, make_config, port_of, running_instance
from scenarios.test_dokodemo_scenarios import dokodemo
from support.peers import TcpEchoServer

CONN_IDLE = 1
IO_TIMEOUT = 3.0
# The idle connection's end is due CONN_IDLE s after its last byte (the wheel ticks in
# whole seconds); with the wheel held by the dial, it came after the dial's 16 s.
END_WITHIN = CONN_IDLE + 3.0


@contextlib.contextmanager
def unanswered_listener() -> Iterator[int]:
    """A port whose SYNs go unanswered: its accept queue is full and nobody accepts, so a
    connect hangs in SYN retries as it would behind a firewall that drops."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        fillers: List[socket.socket] = []
        try:
            for _ in range(8):  # bounded: the queue is full after one or two
                filler = _connected(port)
                if filler is None:
                    yield port
                    return
                fillers.append(filler)
            raise AssertionError("could not fill the accept queue")
        finally:
            for sock in fillers:
                sock.close()


def _connected(port: int) -> Optional[socket.socket]:
    """A connection queued on ``port``, or None if the connect hangs."""
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(("127.0.0.1", port))
    except socket.timeout:
        probe.close()
        return None
    except BaseException:
        probe.close()
        raise
    return probe


def test_an_upstream_dial_that_hangs_holds_no_other_connections_timer(
        tcp_echo: TcpEchoServer) -> None:
    with unanswered_listener() as silent_port:
        door = dokodemo(address="127.0.0.1", port=53, network="udp")
        plain = dokodemo(tag="plain", address="127.0.0.1", port=tcp_echo.port)
        config = make_config([door, plain], [
            {"tag": "dns-out", "protocol": "dns",
             "settings": {"network": "tcp", "address": "127.0.0.1", "port": silent_port}},
            {**freedom(), "tag": "direct"}])
        config["routing"] = {"rules": [
            {"type": "field", "inboundTag": ["door"], "outboundTag": "dns-out"},
            {"type": "field", "inboundTag": ["plain"], "outboundTag": "direct"}]}
        config["policy"] = {"levels": {"0": {"connIdle": CONN_IDLE}}}
        with running_instance(config) as instance, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            # A TXT query goes upstream: the dial hangs; the session's idle timer aborts it.
            query = dns.message.make_query("example.com", "TXT").to_wire()
            client.sendto(query, ("127.0.0.1", port_of(instance, "door")))
            time.sleep(CONN_IDLE + 1.5)
            with socket.create_connection(("127.0.0.1", port_of(instance, "plain")),
                                          IO_TIMEOUT) as sock:
                sock.sendall(b"ping")
                assert sock.recv(4) == b"ping"
                started = time.monotonic()
                sock.settimeout(END_WITHIN + 1.0)
                assert sock.recv(1) == b""  # ended by its idle timer
                assert time.monotonic() - started < END_WITHIN
