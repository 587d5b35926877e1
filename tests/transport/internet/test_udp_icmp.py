"""``recv_past_icmp``: a connected UDP socket whose peer was down for a moment reads the
peer's answers once it is back (the ICMP errors of the sends meanwhile are skipped)."""
import socket
import time

import pytest

from v2sync.common.net import Address, Destination
from v2sync.transport.internet.udp import dial_udp, recv_past_icmp

ICMP_SETTLE = 0.2  # loopback's ICMP errors are back long before this
TIMEOUT = 5.0


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_answers_after_icmp_errors_are_read_and_other_errors_raised() -> None:
    port = _closed_udp_port()
    with dial_udp(Destination(Address.parse("127.0.0.1"), port)) as sock:
        sock.send(b"to nobody")
        time.sleep(ICMP_SETTLE)
        sock.settimeout(ICMP_SETTLE)
        with pytest.raises(socket.timeout):  # the error is read past; no answer yet
            recv_past_icmp(sock, 64)
        sock.settimeout(TIMEOUT)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", port))
            sock.send(b"back")
            data, source = peer.recvfrom(64)
            peer.sendto(b"answer to " + data, source)
            assert recv_past_icmp(sock, 64) == b"answer to back"
    with pytest.raises(OSError):  # closed: not an ICMP error, raised
        recv_past_icmp(sock, 64)


def test_a_plain_recv_would_have_stopped_at_the_error() -> None:
    """What the helper is for: the error comes out of the next recv, answer or not."""
    port = _closed_udp_port()
    with dial_udp(Destination(Address.parse("127.0.0.1"), port)) as sock:
        sock.settimeout(TIMEOUT)
        sock.send(b"to nobody")
        time.sleep(ICMP_SETTLE)
        with pytest.raises(ConnectionRefusedError):
            sock.recv(64)
