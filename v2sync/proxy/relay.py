"""The data phase shared by every handler (v2ray ``proxy/socks/server.go::transport``).

Two directions run as a thread pair: *request* (client -> target) in a pooled thread,
*response* (target -> client) in the caller's thread. One ``ActivityTimer`` covers both: any
traffic resets it; when the request side ends it becomes ``downlinkOnly``, when the response
side ends it becomes ``uplinkOnly``; when it expires the connection is aborted. Any error
aborts both directions at once.

A direction given as a ``PipeDrain`` (pipe -> connection) goes to the pooled thread and
parks there whenever its pipe stays empty, so a held, idle connection keeps one thread per
side (its socket reader) instead of two. With two plain directions the request goes to the
pooled thread: clients usually finish first, and the answer's tail then gets
``downlinkOnly`` seconds; finishing in a pooled thread hands that thread straight back.
``first`` runs in the caller's thread before the pair starts, so bytes that are already
here (a payload pipelined behind the handshake, chunks queued in the pipe) go out without
waiting for a thread hand-over.
"""
from __future__ import annotations

import contextlib
import threading
import time
from functools import partial
from typing import Callable, Iterator, List, Optional, Protocol, Union

from v2sync.common.errors import PipeInterrupted, V2SyncError, detached
from v2sync.common.signal import ActivityTimer
from v2sync.common.task import (HAND_ON, PARKED, Steps, Waker, at_once, drive, outside_slot,
                                run_pair_steps, started_here)
from v2sync.features.proxy import ProxyContext
from v2sync.infra.conf.model import LevelPolicy
from v2sync.transport.copy import (PARK_AFTER, PipeDrain, conn_drain,
                                   copy_conn_to_pipe_steps, flush_ready)
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.dialer import Pause
from v2sync.transport.internet.udp import recv_or_park, shutdown_udp
from v2sync.transport.link import Link

Direction = Callable[[ActivityTimer], None]


class Parkable:
    """A direction written as steps (a socket reader that parks while idle,
    ``transport.copy.parkable_reads``): ``steps(timer)`` makes its generator."""

    __slots__ = ("steps",)

    def __init__(self, steps: Callable[[ActivityTimer], Steps[object]]):
        self.steps = steps


Side = Union[Direction, PipeDrain, Parkable]

# Extra seconds past the longest policy timeout before a stuck copy thread is given up on;
# normally the timer has aborted the connection long before. The wait starts over while
# the relay moved bytes within that time (``_moving``): a half-closed transfer that keeps
# moving runs as long as in 4.34, whose relays wait for both directions without a cap.
JOIN_SLACK = 5.0


def run_relay(ctx: ProxyContext, name: str, policy: LevelPolicy, conn: Optional[Connection],
              abort: Callable[[], None], request: Side, response: Side,
              first: Optional[Direction] = None) -> Optional[BaseException]:
    """``run_relay_steps`` run to the end in this thread."""
    return drive(run_relay_steps(ctx, name, policy, conn, abort, request, response, first))


def run_relay_steps(ctx: ProxyContext, name: str, policy: LevelPolicy,
                    conn: Optional[Connection], abort: Callable[[], None], request: Side,
                    response: Side, first: Optional[Direction] = None
                    ) -> Steps[Optional[BaseException]]:
    """Run ``first`` (if any), then both directions to completion; returns the first error
    (None on a clean finish). The foreground direction's waits (a ``Parkable`` reader) are
    this generator's: run under ``ThreadGroup.spawn_steps``, an idle relay keeps no thread.

    ``conn``, the stream both directions share, is made blocking here, once, before the
    pair starts: the activity timer bounds the relay, not a socket timeout. A socket's
    timeout belongs to the socket, and changing it while the other thread is inside send()
    makes that send fail with EAGAIN.
    """
    if conn is not None:
        conn.settimeout(None)
    timer = ctx.timers.new_timer(policy.conn_idle, abort)
    # The pooled thread's task is named after its direction: "-up" (client -> target) or
    # "-down" (target -> client). When a side ends, the timer gives the other side
    # downlinkOnly (the request ended) or uplinkOnly (the response ended).
    down = isinstance(response, PipeDrain) and not isinstance(request, PipeDrain)
    background, foreground = (response, request) if down else (request, response)
    after_background, after_foreground = (
        (policy.uplink_only, policy.downlink_only) if down
        else (policy.downlink_only, policy.uplink_only))

    run_background = _background_runner(background, timer)

    def background_step(wake: Waker) -> object:
        if run_background(wake) is PARKED:
            return PARKED
        timer.set_timeout(after_background)
        return None

    def foreground_steps() -> Steps[None]:
        yield from _side_steps(foreground, timer)
        timer.set_timeout(after_foreground)

    longest = max(policy.conn_idle, policy.uplink_only, policy.downlink_only)
    try:
        # An outbound started in its inbound's thread (``start_here``) sends what the
        # client has sent so far from there, then hands on. With nothing queued yet it
        # hands on first: ``first`` may wait for the client's bytes, which that very
        # thread is to read.
        here = started_here()
        if here and not _input_queued(request, response):
            here = False
            yield HAND_ON
        if first is not None:
            try:
                first(timer)
            except Exception as exc:  # as run_pair's guard does: abort, report
                abort()
                return detached(exc)
        if here:
            yield HAND_ON
        inline = background.ready_inline if isinstance(background, PipeDrain) else None
        return (yield from run_pair_steps(
            ctx.threads, f"relay-{name}-{'down' if down else 'up'}", background_step,
            foreground_steps(), lambda exc: abort(), longest + JOIN_SLACK, inline,
            ctx.timers, busy=lambda: _moving(timer, longest + JOIN_SLACK)))
    finally:
        timer.cancel()


def _input_queued(request: Side, response: Side) -> bool:
    """Bytes, or the end, wait in the pipe the relay drains (an outbound's request side)."""
    drain = request if isinstance(request, PipeDrain) else response
    return isinstance(drain, PipeDrain) and (drain.pipe.buffered > 0 or drain.pipe.is_closed)


def _moving(timer: ActivityTimer, within: float) -> bool:
    """The relay is still live and moved bytes in the last ``within`` seconds (each byte
    re-arms the timer): its join waits on. Read from the timer's clock, so a stopped wheel
    (a retired Instance's, past its close) cannot hold a join forever."""
    return not timer.done and time.monotonic() - timer.last < within


def _background_runner(side: Side, timer: ActivityTimer) -> Callable[[Waker], object]:
    """One background direction as a step the pair's waker runs again: a drain's step or
    a ``Parkable``'s next steps (either may park), or a whole loop."""
    if isinstance(side, PipeDrain):
        return partial(side.step, timer)
    if isinstance(side, Parkable):
        return _ParkedSteps(side.steps(timer)).step
    return lambda wake: drive(_side_steps(side, timer))  # a loop: outside its run slot


class _ParkedSteps:
    """A ``Parkable`` in the background: each step runs its generator to its next wait,
    leaves the pair's waker there and parks (``_StepsTask`` of ``common.task`` does the
    same for a whole task)."""

    __slots__ = ("steps",)

    def __init__(self, steps: Steps[object]):
        self.steps = steps

    def step(self, wake: Waker) -> object:
        try:
            wait = self.steps.send(None)
        except StopIteration:
            return None
        wait.arm(wake)  # suspended now: the wake may come at once, from any thread
        return PARKED


def _side_steps(side: Side, timer: ActivityTimer) -> Steps[object]:
    """One foreground direction as steps: only a ``Parkable`` ever waits."""
    if isinstance(side, Parkable):
        return side.steps(timer)
    if isinstance(side, PipeDrain):
        return at_once(lambda: side.step(timer))
    # A plain loop (a UDP socket's reader, a pipe's blocking copy) blocks in calls of its
    # own for as long as the relay lives: it holds no run slot (``common.task``).
    return at_once(lambda: outside_slot(side, timer))


def relay_stream_steps(ctx: ProxyContext, name: str, policy: LevelPolicy, conn: Connection,
                       link: Link, finish: Optional[Callable[[], None]] = None
                       ) -> Steps[Optional[BaseException]]:
    """An inbound's raw byte relay (SOCKS CONNECT, HTTP CONNECT, dokodemo-door, a
    fallback): client <-> link. Bytes the client pipelined behind its handshake went with
    the dispatch. ``finish`` runs at the link's end of data. Steps: the client's reader
    parks while idle."""
    def abort() -> None:
        conn.abort()
        link.interrupt()

    def request(timer: ActivityTimer) -> Steps[None]:
        yield from copy_conn_to_pipe_steps(conn, link.writer, timer, ctx.readiness)
        link.writer.close()

    return (yield from run_relay_steps(ctx, name, policy, conn, abort, Parkable(request),
                                       conn_drain(link.reader, conn, finish)))


class PacketConn(Protocol):
    """One source's datagrams: ``read_steps`` gives those queued, each whole (None once the
    source is done), parking while there are none."""

    def read_steps(self) -> Steps[Optional[List[bytes]]]: ...

    def write(self, data: bytes) -> None: ...

    def abort(self) -> None: ...


def relay_datagrams_steps(ctx: ProxyContext, name: str, policy: LevelPolicy, conn: PacketConn,
                          link: Link) -> Steps[Optional[BaseException]]:
    """Datagrams both ways between ``conn`` and ``link``, one pipe chunk each: a
    dokodemo-door UDP session, a ``proxySettings`` chain's carried UDP. Steps: both
    directions park while idle, so a quiet session holds no thread."""
    def abort() -> None:
        conn.abort()
        link.interrupt()

    def request(timer: ActivityTimer) -> Steps[None]:
        while True:
            datagrams = yield from conn.read_steps()
            if datagrams is None:
                link.writer.close()
                return
            timer.update()
            for datagram in datagrams:
                link.writer.write(datagram)
            del datagrams  # handed on: not kept alive while the next read waits

    def answer(chunks: List[bytes]) -> None:
        for chunk in chunks:
            conn.write(chunk)

    return (yield from run_relay_steps(ctx, name, policy, None, abort, Parkable(request),
                                       PipeDrain(link.reader, answer, datagrams=True)))


def relay_socket_datagrams_steps(ctx: ProxyContext, name: str, policy: LevelPolicy, sock,
                                 link: Link, size: int, send: Callable[[bytes], bool],
                                 receive: Callable[[bytes], Optional[bytes]],
                                 also_abort: Callable[[], None] = lambda: None
                                 ) -> Steps[Optional[BaseException]]:
    """An outbound's UDP socket and its link, one datagram per pipe chunk (freedom, the
    Shadowsocks and SOCKS clients). ``send(chunk)`` sends one out (False: the session must
    end); ``receive(data)`` turns one of at most ``size`` bytes that came in into the
    payload for the link (None: dropped). Steps: both directions park while quiet (each
    held a thread, blocked in the pipe or in ``recv``). An abort shuts ``sock`` down (and
    runs ``also_abort``); the caller closes it once this returns."""
    stopped = threading.Event()  # a shut-down socket reads as empty datagrams: see there

    def abort() -> None:
        stopped.set()
        shutdown_udp(sock)
        also_abort()
        link.interrupt()

    def out(chunks: List[bytes]) -> None:
        for chunk in chunks:
            if not send(chunk):
                abort()
                return

    def answers(timer: ActivityTimer) -> Steps[None]:
        while True:
            try:
                data = yield from recv_or_park(sock, size, ctx.readiness, PARK_AFTER,
                                               stopped.is_set)
            except OSError:
                return  # closed
            if stopped.is_set():
                return
            payload = receive(data)
            if payload is not None:
                timer.update()
                link.writer.write(payload)

    return (yield from run_relay_steps(ctx, name, policy, None, abort,
                                       PipeDrain(link.reader, out, datagrams=True),
                                       Parkable(answers)))


def relay_upstream_steps(ctx: ProxyContext, name: str, policy: LevelPolicy, conn: Connection,
                         link: Link, leftover: bytes = b""
                         ) -> Steps[Optional[BaseException]]:
    """An outbound's raw byte relay once its handshake is done (freedom, HTTP CONNECT,
    SOCKS CONNECT, a fallback's target): link <-> upstream. ``leftover``: bytes the
    upstream sent right behind its handshake reply; they reach the client first. Steps:
    the upstream reader parks while idle. An interrupt of the link aborts the upstream
    (``aborted_with``)."""
    def abort() -> None:
        conn.abort()
        link.interrupt()

    def first(timer: ActivityTimer) -> None:
        if leftover:
            link.writer.write(leftover)
        flush_ready(link.reader, conn, timer)  # the client's payload, if queued

    def response(timer: ActivityTimer) -> Steps[None]:
        yield from copy_conn_to_pipe_steps(conn, link.writer, timer, ctx.readiness)
        link.writer.close()

    with aborted_with(link, abort):
        return (yield from run_relay_steps(ctx, name, policy, conn, abort,
                                           conn_drain(link.reader, conn), Parkable(response),
                                           first))


@contextlib.contextmanager
def aborted_with(link: Link, abort: Callable[[], None]) -> Iterator[None]:
    """An outbound relay's ``abort`` runs when its link is interrupted, as long as the
    relay runs. The other side failing (a client gone, a mux connection dead) so ends the
    upstream connection at once, as 4.34's connections end with their shared context;
    without it, a relay whose upstream is idle and whose request side had already ended
    would only notice at its downlinkOnly timer."""
    for pipe in (link.reader, link.writer):
        pipe.on_interrupt(abort)
    try:
        yield
    finally:
        for pipe in (link.reader, link.writer):
            pipe.remove_interrupt_hook(abort)


def wait_unless_interrupted(link: Link, seconds: float) -> bool:
    """Wait ``seconds``, or less if the link is interrupted (a shutdown, the other side
    failing): True if it was. The wait holds no run slot (common.task)."""
    interrupted = threading.Event()
    with aborted_with(link, interrupted.set):  # set at once if already interrupted
        return outside_slot(interrupted.wait, max(seconds, 0.0))


def link_pause(link: Link) -> Pause:
    """A dial retry's wait (``dialer.with_retry``'s ``pause``) that the link's interrupt
    ends: True, give up. A shutdown or the other side failing so stops the tries at once,
    as a cancelled context stops 4.34's dials, instead of holding the outbound's thread
    through the rest of the schedule (up to 2 s). The event is made only on a failure."""
    return partial(wait_unless_interrupted, link)


@contextlib.contextmanager
def setup_aborted_with(link: Link, conn: Connection) -> Iterator[None]:
    """An outbound's exchange with its server before the relay (a CONNECT, a SOCKS
    greeting, a write that finishes a TLS handshake), cut by the link's interrupt as the
    relay is (``aborted_with``): a failure after that abort is a PipeInterrupted, logged
    as the cancelled setup it is, not as the server's fault."""
    aborted = []  # a flag the hook sets (an Event would cost every connection more)

    def abort() -> None:
        aborted.append(True)
        conn.abort()

    with aborted_with(link, abort):
        try:
            yield
        except V2SyncError as e:
            if aborted:
                raise PipeInterrupted(f"interrupted during the setup: {e}") from e
            raise
