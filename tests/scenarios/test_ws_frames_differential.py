"""Frames a WebSocket server refuses, and close frames, against v2ray 4.34 and v2sync: after
the same upgrade, the same client frame gets the same bytes back, then the close. 4.34's
gorilla answers a protocol error with a close frame (1002) naming the problems; a close
frame is echoed with its code, and one without a status (under 2 bytes) with an empty one.
Frames are written here by hand from RFC 6455, not with v2sync's encoder."""
from __future__ import annotations

import re
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, Tuple

import pytest

from scenarios.helpers_scenarios import read_until_closed
from support.peers import free_port
from support.procs import ConfigProcess, V2RayProcess, V2SyncProcess

WS_PATH = "/ws"
IO_TIMEOUT = 8.0
MAX_READS = 64  # an answer is a few hundred bytes
MASK = b"\x01\x02\x03\x04"
UPGRADE = (f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
           ).encode()


def frame(opcode: int, payload: bytes, masked: bool = True, fin: bool = True,
          rsv: int = 0) -> bytes:
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes([first, mask_bit | size])
    else:
        head = bytes([first, mask_bit | 126]) + struct.pack("!H", size)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


CASES: Dict[str, bytes] = {
    "unmasked": frame(2, b"hello", masked=False),
    "rsv1": frame(2, b"hello", rsv=0x40),
    "rsv1-and-unmasked": frame(2, b"hello", masked=False, rsv=0x40),
    "bad-opcode": frame(3, b"hello"),
    "continuation-first": frame(0, b"hello"),
    "control-over-125": frame(9, b"p" * 126),
    "control-not-final": frame(9, b"pp", fin=False),
    "data-before-fin": frame(1, b"a", fin=False) + frame(2, b"b"),
    "close-code-999": frame(8, struct.pack("!H", 999)),
    "close-code-1005": frame(8, struct.pack("!H", 1005)),
    "close-code-1014": frame(8, struct.pack("!H", 1014)),
    "close-reason-not-utf8": frame(8, b"\x03\xe8\xff"),
    "length-top-bit": bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big") + MASK + b"abcdef",
    "close-empty": frame(8, b""),
    "close-1-byte": frame(8, b"x"),
    "close-1001": frame(8, struct.pack("!H", 1001) + b"bye"),
}


def config(port: int) -> Dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"tag": "ws-in", "protocol": "socks", "listen": "127.0.0.1",
                          "port": port, "settings": {"auth": "noauth"},
                          "streamSettings": {"network": "ws", "wsSettings": {"path": WS_PATH}}}],
            "outbounds": [{"protocol": "freedom"}]}


@pytest.fixture(scope="module")
def servers(v2ray_bin: str) -> Iterator[Dict[str, int]]:
    ports = {"v2ray": free_port(), "v2sync": free_port()}
    processes: Dict[str, ConfigProcess] = {
        "v2ray": V2RayProcess(config(ports["v2ray"]), binary=v2ray_bin),
        "v2sync": V2SyncProcess(config(ports["v2sync"]))}
    with processes["v2ray"], processes["v2sync"]:
        yield ports


def answer(port: int, data: bytes) -> bytes:
    """What follows the 101, up to the close."""
    with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.sendall(UPGRADE)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, f"closed in the upgrade: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 "), head
        sock.sendall(data)
        return read_until_closed(sock, IO_TIMEOUT)


@pytest.mark.parametrize("case", list(CASES))
def test_frames_are_answered_as_4_34_answers(servers: Dict[str, int], case: str) -> None:
    ours = answer(servers["v2sync"], CASES[case])
    assert ours == answer(servers["v2ray"], CASES[case])
    assert ours[:1] == b"\x88"  # a close frame, each time


def upgrade_with(extra: bytes, host: bytes = b"Host: x\r\n", version: bytes = b"HTTP/1.1",
                 size: int = 0) -> bytes:
    """An upgrade request, padded with an X-Pad header to ``size`` bytes when given."""
    start = b"GET " + WS_PATH.encode() + b" " + version + b"\r\n" + host
    rest = UPGRADE.split(b"\r\n", 2)[2] + extra  # after the request line and the Host
    if size:
        pad = size - len(start) - len(rest) - len(b"X-Pad: \r\n")
        rest = b"X-Pad: " + b"a" * pad + b"\r\n" + rest
    return start + rest


def with_header(line: bytes) -> bytes:
    """The upgrade request with one more header line after Host."""
    return UPGRADE.replace(b"Host: x\r\n", b"Host: x\r\n" + line)


HEADS = {
    "no-host": upgrade_with(b"", host=b""),
    "no-host-http-1.0": upgrade_with(b"", host=b"", version=b"HTTP/1.0"),
    "two-hosts": upgrade_with(b"", host=b"Host: a\r\nHost: b\r\n"),
    "head-of-6144-bytes": upgrade_with(b"", size=6144),
    "head-of-6145-bytes": upgrade_with(b"", size=6145),
    "wrong-path": UPGRADE.replace(b"GET /ws ", b"GET /nope "),
    "wrong-path-then-right": UPGRADE.replace(b"GET /ws ", b"GET /nope ") + UPGRADE,
    "wrong-path-connection-close": UPGRADE.replace(b"GET /ws ", b"GET /nope ").replace(
        b"Connection: Upgrade", b"Connection: close"),
    "wrong-path-http-1.0": UPGRADE.replace(b"GET /ws HTTP/1.1", b"GET /nope HTTP/1.0"),
    "post": UPGRADE.replace(b"GET ", b"POST "),
    "head-method": UPGRADE.replace(b"GET ", b"HEAD "),
    "no-key": UPGRADE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
    "short-key": UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="),
    "version-8": UPGRADE.replace(b"Version: 13", b"Version: 8"),
    "no-upgrade": UPGRADE.replace(b"Upgrade: websocket\r\n", b""),
    "plain-get": b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
    "frame-before-the-101": UPGRADE + frame(2, b"hello"),
    # request lines as Go 1.19's net/http reads them (found by a TLS/WS review)
    "http-1.2": upgrade_with(b"", version=b"HTTP/1.2"),
    "http-2.0": upgrade_with(b"", version=b"HTTP/2.0"),
    "http-3.1": upgrade_with(b"", version=b"HTTP/3.1"),
    "http-1.10": upgrade_with(b"", version=b"HTTP/1.10"),
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "options-star": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    "options-star-close": b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "connect": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    "connect-without-host": b"CONNECT a:443 HTTP/1.1\r\n\r\n",
    "star-get": b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    # headers as Go 1.19's textproto and net/http server read them (found by a WS review)
    "bare-lf": UPGRADE.replace(b"\r\n", b"\n"),
    "obs-fold": with_header(b"X-A: b\r\n  c\r\n"),
    "fold-first": UPGRADE.replace(b"Host: x\r\n", b" Host: x\r\n"),
    "no-colon": with_header(b"X-A b\r\n"),
    "space-before-colon": with_header(b"X-A : b\r\n"),
    "empty-name": with_header(b": b\r\n"),
    "two-content-lengths": with_header(b"Content-Length: 0\r\nContent-Length: 1\r\n"),
    "same-content-lengths": with_header(b"Content-Length: 0\r\nContent-Length: 0\r\n"),
    "bad-content-length": with_header(b"Content-Length: abc\r\n"),
    "signed-content-length": with_header(b"Content-Length: +0\r\n"),
    "nul-in-value": with_header(b"X-A: a\x00b\r\n"),
    "cr-in-value": with_header(b"X-A: a\rb\r\n"),
    "tab-in-value": with_header(b"X-A: a\tb\r\n"),
    "obs-text-in-value": with_header(b"X-A: a\xff\xfeb\r\n"),
    "host-with-space": UPGRADE.replace(b"Host: x", b"Host: x y"),
    "host-empty": UPGRADE.replace(b"Host: x", b"Host: "),
    "host-utf8": UPGRADE.replace(b"Host: x", b"Host: \xc3\xa9"),
    "host-with-port-and-brackets": UPGRADE.replace(b"Host: x", b"Host: [::1]:80"),
}
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def head_answer(port: int, data: bytes) -> bytes:
    """Everything up to the close, or to the end of a 101's head; Date values blanked."""
    with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.sendall(data)
        got = b""
        for _ in range(MAX_READS):
            if b"HTTP/1.1 101 " in got and got.endswith(b"\r\n\r\n"):
                break
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        return _DATE.sub(b"\r\nDate: <now>\r\n", got)


@pytest.fixture(scope="module")
def head_answers(servers: Dict[str, int]) -> Dict[Tuple[str, str], bytes]:
    """Every head through both servers at once: the kept-alive ones wait out 4 s together."""
    with ThreadPoolExecutor(2 * len(HEADS)) as pool:
        jobs = {(case, name): pool.submit(head_answer, port, data)
                for case, data in HEADS.items() for name, port in servers.items()}
        return {key: job.result() for key, job in jobs.items()}


@pytest.mark.parametrize("case", list(HEADS))
def test_upgrade_heads_are_answered_as_4_34_answers(head_answers: Dict[Tuple[str, str], bytes],
                                                    case: str) -> None:
    assert len(HEADS[case]) == 6144 or "6144" not in case
    assert head_answers[case, "v2sync"] == head_answers[case, "v2ray"]


def _one_shot_target(payload: bytes) -> Tuple[socket.socket, Any]:
    """A target that sends ``payload`` to its first client and closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(IO_TIMEOUT)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(payload)

    pool = ThreadPoolExecutor(1)
    return listener, (pool, pool.submit(serve))


def test_a_target_that_closes_gets_the_client_a_close_frame_as_in_4_34(
        servers: Dict[str, int]) -> None:
    """The target sends "bye" and closes: "bye", then a close frame (1000), then the end.
    v2sync's close frame failed after the relay's end had shut the socket down, so the
    client saw no close frame, an abnormal closure (found by a review)."""
    answers = {}
    for name, port in servers.items():
        listener, (pool, served) = _one_shot_target(b"bye")
        target = listener.getsockname()[1]
        request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + target.to_bytes(2, "big")
        greeting = frame(2, b"\x05\x01\x00") + frame(2, request)
        try:
            answers[name] = answer(port, greeting)
        finally:
            served.result(IO_TIMEOUT)
            pool.shutdown()
    port_at = slice(14, 16)  # the SOCKS reply's bound port: each server's own
    for name in answers:
        ours = bytearray(answers[name])
        ours[port_at] = b"??"
        answers[name] = bytes(ours)
    assert answers["v2sync"] == answers["v2ray"]
    assert answers["v2sync"].endswith(b"\x82\x03bye\x88\x02\x03\xe8")


def _answer_to_a_head_cut_by_the_client(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.sendall(UPGRADE[:30])
        sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock, IO_TIMEOUT)


def test_a_head_the_client_cuts_short_is_answered_as_by_4_34(servers: Dict[str, int]) -> None:
    """Go's net/http answers a head that ends mid-way (ErrUnexpectedEOF) with its 400;
    v2sync closed without a word (found by a review)."""
    ours = _answer_to_a_head_cut_by_the_client(servers["v2sync"])
    assert ours == _answer_to_a_head_cut_by_the_client(servers["v2ray"])
    assert ours.startswith(b"HTTP/1.1 400 Bad Request")
