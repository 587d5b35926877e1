"""Connection's gather write, and the WebSocket layer's use of it, over real loopback
sockets: large payloads leave beside their headers instead of being copied behind them,
and no data frame ever follows a close frame."""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import List, Tuple

import pytest

from v2sync.common.errors import TransportError
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.websocket.transport import GATHER_MIN_PAYLOAD, WsConnection

TIMEOUT = 10.0


def _pair() -> Tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    server.settimeout(TIMEOUT)
    return client, server


def _read_exactly(conn: Connection, size: int) -> bytes:
    parts: List[bytes] = []
    got = 0
    while got < size:
        chunk = conn.read(65536)
        assert chunk, "EOF too early"
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _send_while_reading(send, receiver: Connection, size: int) -> bytes:
    """Run ``send`` in a thread while this one reads ``size`` bytes from ``receiver``."""
    errors: List[BaseException] = []

    def guarded() -> None:
        try:
            send()
        except BaseException as e:  # reported below
            errors.append(e)

    thread = threading.Thread(target=guarded)
    thread.start()
    try:
        return _read_exactly(receiver, size)
    finally:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the sender hung"
        assert not errors, errors


def test_gather_write_survives_partial_sends() -> None:
    raw_client, raw_server = _pair()
    # A small send buffer and a socket timeout (non-blocking sends underneath) make
    # sendmsg return early, part-way through a part, many times.
    raw_client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client, server = Connection(raw_client), Connection(raw_server)
    parts = [b"head", os.urandom(700_000), b"", os.urandom(33), os.urandom(200_000)]
    try:
        got = _send_while_reading(lambda: client.sendall_parts(parts), server,
                                  sum(map(len, parts)))
        assert got == b"".join(parts)
    finally:
        client.close()
        server.close()


def test_websocket_large_frames_both_ways_arrive_intact() -> None:
    raw_client, raw_server = _pair()
    client = WsConnection(Connection(raw_client), client=True)
    server = WsConnection(Connection(raw_server), client=False)
    small, large = os.urandom(1000), os.urandom(GATHER_MIN_PAYLOAD * 5 + 7)
    try:
        for sender, receiver in ((server, client), (client, server)):  # unmasked, masked
            for payload in (small, large):
                got = _send_while_reading(lambda: sender.sendall(payload), receiver,
                                          len(payload))
                assert got == payload
    finally:
        client.close()
        server.close()


def test_no_data_frame_follows_a_close_frame() -> None:
    """The reader thread may send a close frame while a writer waits for the write lock;
    the writer must then fail rather than put a data frame after the close (RFC 6455
    §5.5.1)."""
    raw_client, raw_server = _pair()
    server = WsConnection(Connection(raw_server), client=False)
    peer = Connection(raw_client)
    failures: List[BaseException] = []

    def write() -> None:
        try:
            server.sendall(b"late data")
        except OSError as e:
            failures.append(e)

    try:
        server._write_lock.acquire()
        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.1)  # the writer reaches the lock and waits there
        server._close_sent = True  # what _send_close does before it takes the lock
        server._write_lock.release()
        writer.join(TIMEOUT)
        assert not writer.is_alive()
        assert failures and isinstance(failures[0], BrokenPipeError)
        raw_client.settimeout(0.2)
        with pytest.raises(socket.timeout):
            peer.recv(100)  # nothing was written
    finally:
        server.close()
        peer.close()



def test_an_armed_websocket_read_takes_frames_in_hand_and_gives_up_on_silence() -> None:
    """A parking reader (``arm_read_timeout``): payload left from a frame bigger than the
    read, and a whole frame that came with the one read, come at once; a partial frame or
    nothing at all gives up (None) after the timeout, and the rest completes it later."""
    raw_client, raw_server = _pair()
    client = WsConnection(Connection(raw_client), client=True)
    server = WsConnection(Connection(raw_server), client=False)
    try:
        client.settimeout(None)  # blocking, as a relay makes it
        assert client.arm_read_timeout(0.05) and client.inner.read_timeout_armed
        server.sendall(b"a" * 3000)
        assert client.read(1000) == b"a" * 1000
        assert client.read_or_none(4000) == b"a" * 2000
        raw_server.sendall(b"\x82\x02hi\x82\x03you")  # two unmasked frames in one write
        assert client.read_or_none(2) == b"hi"
        assert client.read_or_none(10) == b"you"
        assert client.read_or_none(10) is None
        raw_server.sendall(b"\x82\x05")  # a frame's head alone: nothing to read yet
        assert client.read_or_none(10) is None
        raw_server.sendall(b"hello")
        assert client.read_or_none(10) == b"hello"
    finally:
        client.close()
        server.close()


def test_an_armed_read_gives_up_on_silence_and_every_other_failure_still_raises() -> None:
    """``read_or_none``: None only for an armed read that found nothing (the idle relay
    reader parking); a non-blocking socket that is not armed, or a reset, raise
    ``TransportError`` as ``read`` does."""
    raw_client, raw_server = _pair()
    client = Connection(raw_client)
    try:
        client.settimeout(0.0)
        with pytest.raises(TransportError, match="failed"):
            client.read_or_none(10)  # not armed: an empty non-blocking read is an error
        client.settimeout(None)
        assert client.arm_read_timeout(0.02)
        assert client.read_or_none(10) is None
        raw_server.sendall(b"hi")
        assert client.read_or_none(10) == b"hi"
        raw_server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        raw_server.close()  # linger 0: a reset
        with pytest.raises(TransportError, match="failed"):
            client.read_or_none(10)
    finally:
        client.close()
        raw_server.close()
