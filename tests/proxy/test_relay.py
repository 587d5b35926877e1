"""The relay's thread pair (proxy/relay.py) over real loopback TCP connections."""
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from v2sync.app.policy.manager import PolicyManager
from v2sync.common.signal import TimerWheel
from v2sync.common.task import ThreadGroup, drive
from v2sync.features.proxy import ProxyContext
from v2sync.infra.conf.model import LevelPolicy, PolicyConfig
from v2sync.proxy.relay import relay_stream_steps, run_relay, run_relay_steps
from v2sync.transport import copy as copy_module
from v2sync.transport.copy import PipeDrain, flush_ready
from v2sync.transport.internet.conn import Connection, send_queue_empty
from v2sync.transport.link import new_link_pair
from v2sync.transport.pipe import EOF

WAIT = 5.0
POLICY = LevelPolicy(conn_idle=10, uplink_only=1, downlink_only=1)


@contextmanager
def relay_context():
    timers = TimerWheel()
    timers.start()
    threads = ThreadGroup("relay-test")
    try:
        yield ProxyContext(PolicyManager(PolicyConfig()), timers, threads)
    finally:
        assert threads.shutdown(WAIT)
        timers.stop()


@contextmanager
def tcp_pair():
    """(our Connection, the peer's socket), connected over 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname(), timeout=WAIT)
        ours, _ = listener.accept()
    conn = Connection(ours)
    try:
        yield conn, peer
    finally:
        conn.close()
        peer.close()


def test_connection_is_blocking_before_either_direction_runs():
    """A timeout left from the dial must be gone before two threads share the socket:
    changing it while the other thread is inside send() makes that send fail (EAGAIN)."""
    seen = {}
    with relay_context() as ctx, tcp_pair() as (conn, _peer):
        conn.settimeout(16.0)

        def record(side):
            return lambda timer: seen.setdefault(side, conn.sock.gettimeout())

        error = run_relay(ctx, "t", POLICY, conn, conn.abort, record("request"),
                          record("response"), record("first"))
    assert error is None
    assert seen == {"first": None, "request": None, "response": None}


def test_request_in_a_pooled_thread_response_and_first_in_the_callers():
    names = {}
    with relay_context() as ctx, tcp_pair() as (conn, _peer):
        def record(side):
            return lambda timer: names.setdefault(side, threading.current_thread().name)

        run_relay(ctx, "t", POLICY, conn, conn.abort, record("request"), record("response"),
                  record("first"))
    caller = threading.current_thread().name
    assert names["first"] == caller and names["response"] == caller
    assert names["request"] == "relay-t-up"


def test_request_thread_is_released_while_the_response_goes_on():
    """The client finishing first frees its pooled thread at once (no thread waits out the
    downlinkOnly linger in join)."""
    request_done = threading.Event()
    release_response = threading.Event()
    with relay_context() as ctx, tcp_pair() as (conn, _peer):
        def response(timer):
            assert request_done.wait(WAIT)
            # The request's task has finished although the pair has not.
            assert not [h for h in ctx.threads.live() if h.name == "relay-t-up"]
            release_response.set()

        run_relay(ctx, "t", POLICY, conn, conn.abort, lambda timer: request_done.set(),
                  response)
    assert release_response.is_set()


def test_a_failing_first_step_aborts_and_never_starts_the_pair():
    started = []
    aborted = threading.Event()
    with relay_context() as ctx, tcp_pair() as (conn, _peer):
        def first(timer):
            raise OSError("boom")

        error = run_relay(ctx, "t", POLICY, conn, aborted.set, started.append, started.append,
                          first)
    assert isinstance(error, OSError) and aborted.is_set() and not started


def relay_stream(*args, **kwargs):
    """The inbound's raw relay run to the end in this thread (no waiter: nothing parks)."""
    return drive(relay_stream_steps(*args, **kwargs))


def test_relay_stream_sends_what_the_link_holds_then_the_client_stream():
    """The client's pipelined bytes went into the link with the dispatch; the relay's
    stream follows them."""
    with relay_context() as ctx, tcp_pair() as (conn, peer):
        inbound, outbound = new_link_pair(1024, "t")
        inbound.writer.write(b"early")
        peer.sendall(b"-rest")
        peer.shutdown(socket.SHUT_WR)
        outbound.writer.close()  # the target answered nothing
        error = relay_stream(ctx, "t", POLICY, conn, inbound)
        got = b""
        while (chunk := outbound.reader.read(WAIT)) is not EOF:
            got += chunk
    assert error is None and got == b"early-rest"


def test_relay_stream_does_not_read_the_client_once_the_outbound_stopped():
    """The outbound stopped before the relay began: the request direction is over, so what
    the client sends next stays unread (a reader would wait up to uplinkOnly for nothing)."""
    with relay_context() as ctx, tcp_pair() as (conn, peer):
        inbound, outbound = new_link_pair(1024, "t")
        inbound.writer.write(b"early")
        outbound.reader.interrupt()  # the outbound gave up before reading anything
        peer.sendall(b"more")
        error = relay_stream(ctx, "t", POLICY, conn, inbound)
        conn.settimeout(WAIT)
        assert conn.sock.recv(16) == b"more"
    assert error is not None  # the interrupted downlink ended the response side


@pytest.mark.parametrize("closed", [False, True])
def test_flush_ready_writes_what_is_queued_and_leaves_eof(closed):
    with relay_context() as ctx, tcp_pair() as (conn, peer):
        inbound, outbound = new_link_pair(1024, "t")
        inbound.writer.write(b"one")
        inbound.writer.write(b"two")
        if closed:
            inbound.writer.close()
        timer = ctx.timers.new_timer(10, lambda: None)
        flush_ready(outbound.reader, conn, timer)  # returns at once: it never waits
        timer.cancel()
        peer.settimeout(WAIT)
        got = b""
        while len(got) < 6:
            got += peer.recv(16)
        assert got == b"onetwo"
        if closed:
            assert outbound.reader.read(0) is EOF  # still there for the copy loop
        else:
            assert not outbound.reader.is_closed


def test_a_first_payload_up_to_4_kib_reaches_the_outbound_as_one_chunk():
    """A ClientHello-sized first payload is one pipe chunk (so one upstream write), not cut
    at the 512-byte floor the sizer falls back to when reads come back small."""
    payload = bytes(range(256)) * 12  # 3 KiB, already waiting when the relay starts
    with relay_context() as ctx, tcp_pair() as (conn, peer):
        inbound, outbound = new_link_pair(64 * 1024, "t")
        peer.sendall(payload)
        peer.shutdown(socket.SHUT_WR)
        outbound.writer.close()
        error = relay_stream(ctx, "t", POLICY, conn, inbound)
        chunks = []
        while (chunk := outbound.reader.read(WAIT)) is not EOF:
            chunks.append(chunk)
    assert error is None and chunks == [payload]


def test_an_idle_response_direction_gives_its_thread_back_and_wakes_for_the_next_bytes(
        monkeypatch):
    monkeypatch.setattr(copy_module, "PARK_AFTER", 0.01)
    with relay_context() as ctx, tcp_pair() as (conn, peer):
        inbound, outbound = new_link_pair()
        result = []
        caller = threading.Thread(
            target=lambda: result.append(relay_stream(ctx, "t", POLICY, conn, inbound)))
        caller.start()
        try:
            deadline = time.monotonic() + WAIT
            # Parked from its first step: its task is live, and no worker thread runs it.
            while not ctx.threads.live() and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(copy_module.PARK_AFTER * 4)
            assert len(ctx.threads.live()) == 1
            assert len(ctx.threads._threads) == len(ctx.threads._idle)
            outbound.writer.write(b"late answer")
            assert peer.recv(100) == b"late answer"
            peer.sendall(b"next request")
            assert outbound.reader.read(WAIT) == b"next request"
            outbound.writer.close()
            peer.shutdown(socket.SHUT_WR)
        finally:
            caller.join(WAIT)
    assert result == [None]


def foreground_until(done):
    """A relay's client direction that ends when ``done`` is set, and the event it sets on
    starting. The foreground starts once the drain's first step has returned (run inline
    and parked, or handed to a pooled thread), so a test that waits for it writes to a
    drain that its caller's thread no longer runs."""
    started = threading.Event()

    def request(timer):
        started.set()
        assert done.wait(WAIT)

    return request, started


def stuff(conn):
    """Fill ``conn``'s send buffer (its peer never reads) until bytes stay queued in it
    (SIOCOUTQ > 0); returns how many were written."""
    conn.sock.setblocking(False)
    stuffed = 0
    deadline = time.monotonic() + WAIT
    try:
        while stuffed < 64 * 1024 * 1024 and time.monotonic() < deadline:  # bounded
            try:
                stuffed += conn.sock.send(b"s" * 65536)
            except BlockingIOError:
                if not send_queue_empty(conn):
                    return stuffed
                time.sleep(0.01)  # refused with nothing queued: not yet stuffed, again
    finally:
        conn.sock.setblocking(True)
    raise AssertionError(f"no bytes stayed queued after {stuffed} written")


def test_a_small_write_is_sent_by_the_writer_and_a_large_one_by_a_pooled_thread():
    """A parked drain woken by a few bytes runs in the writer's thread (no hand-over);
    more than INLINE_MAX goes to a pooled thread, so a writer never carries bulk."""
    senders = []
    with relay_context() as ctx, tcp_pair() as (conn, peer):
        inbound, outbound = new_link_pair()

        def send(chunks):
            senders.append((threading.current_thread().name, sum(map(len, chunks))))
            conn.write(b"".join(chunks))

        drain = PipeDrain(inbound.reader, send, conn=conn)
        result = []

        client_done = threading.Event()

        request, started = foreground_until(client_done)
        caller = threading.Thread(target=lambda: result.append(
            run_relay(ctx, "t", POLICY, conn, conn.abort, request, drain)), name="caller")
        caller.start()
        try:
            assert started.wait(WAIT)  # the drain's first step has run, and parked
            outbound.writer.write(b"small answer")
            big = b"x" * (copy_module.INLINE_MAX * 4)
            outbound.writer.write(big)
            received = b""
            while len(received) < len(b"small answer") + len(big):
                received += peer.recv(65536)
            outbound.writer.close()
        finally:
            client_done.set()
            caller.join(WAIT)
    me = threading.current_thread().name
    assert senders[0] == (me, len(b"small answer"))
    assert senders[1][0] == "relay-t-down" and senders[1][1] == len(big)
    assert result == [None]


def test_a_writer_never_sends_for_a_drain_whose_socket_still_has_bytes_queued():
    """A reader that stopped (its receive window full): the small write goes to a pooled
    thread, which may wait there, and the writer goes on at once."""
    senders = []
    with relay_context() as ctx, tcp_pair() as (conn, peer):
        inbound, outbound = new_link_pair()
        stuffed = stuff(conn)

        def send(chunks):
            senders.append(threading.current_thread().name)
            conn.write(b"".join(chunks))

        client_done = threading.Event()
        request, foreground_started = foreground_until(client_done)
        result = []
        caller = threading.Thread(target=lambda: result.append(run_relay(
            ctx, "t", POLICY, conn, conn.abort, request,
            PipeDrain(inbound.reader, send, conn=conn))))
        caller.start()
        try:
            assert foreground_started.wait(WAIT)  # the drain's first step has run
            started = time.monotonic()
            outbound.writer.write(b"small")
            assert time.monotonic() - started < 1.0  # the writer did not wait on the peer
            outbound.writer.close()
            received, want = 0, stuffed + len(b"small")
            while received < want:  # the stalled reader reads again: everything arrives
                data = peer.recv(1 << 20)
                assert data
                received += len(data)
        finally:
            client_done.set()
            caller.join(WAIT)
    assert senders == ["relay-t-down"] and result == [None]


def relay_started_here(ctx, conn, queued: bytes, close: bool) -> dict:
    """An outbound's relay shape (the link's pipe drained to ``conn``, the answer read
    back), its task started in this thread by ``start_here``: which thread ran ``first``
    and which the foreground direction, once the relay is over."""
    inbound, outbound = new_link_pair(1024, "t")
    if queued:
        inbound.writer.write(queued)
    if close:
        inbound.writer.close()
    threads = {}
    done = threading.Event()

    def record(side):
        return lambda timer: threads.setdefault(side, threading.get_ident())

    def steps():
        drain = PipeDrain(outbound.reader, lambda chunks: conn.write(b"".join(chunks)),
                          conn=conn)
        yield from run_relay_steps(ctx, "t", POLICY, conn, conn.abort, drain,
                                   record("response"), record("first"))
        done.set()

    ctx.threads.start_here("out-t", steps())
    threads["caller"] = threading.get_ident()
    inbound.writer.close()  # the client is done: the drain, and the relay, end
    assert done.wait(WAIT)
    return threads


@pytest.mark.parametrize("queued, close", [(b"early", False), (b"", True)],
                         ids=["bytes", "eof"])
def test_a_relay_started_here_sends_what_is_queued_then_hands_on(queued, close):
    """What the client sent so far goes out from the inbound's own thread; the reading of
    the answer goes on elsewhere, so that thread returns to its client."""
    with relay_context() as ctx, tcp_pair() as (conn, _peer):
        threads = relay_started_here(ctx, conn, queued, close)
    assert threads["first"] == threads["caller"]
    assert threads["response"] != threads["caller"]


def test_a_relay_started_here_with_nothing_queued_hands_on_before_its_first_step():
    """``first`` may wait for the client's bytes (VMess's 100 ms for its first payload),
    which the caller's thread is the one to read: it runs elsewhere."""
    with relay_context() as ctx, tcp_pair() as (conn, _peer):
        threads = relay_started_here(ctx, conn, b"", False)
    assert threads["first"] != threads["caller"]
    assert threads["response"] != threads["caller"]

