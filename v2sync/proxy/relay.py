"""The data phase shared by every handler (v2ray ``proxy/socks/server.go::transport``).

Two directions run as a thread pair: *request* (client -> target) in a pooled thread,
*response* (target -> client) in the caller's thread. One ``ActivityTimer`` covers both: any
traffic resets it; when the request side ends it becomes ``downlinkOnly``, when the response
side ends it becomes ``uplinkOnly``; when it expires the connection is aborted. Any error
aborts both directions at once.

Why the request goes to the pooled thread: clients usually finish first, and the answer's
tail then gets ``downlinkOnly`` seconds. The side that finishes first in the caller's thread
must wait in join() for the other; finishing in a pooled thread hands that thread straight
back. So a lingering connection holds one thread per side instead of two, and a busy server
creates half as many. ``first`` runs in the caller's thread before the pair starts, so bytes
that are already here (a payload pipelined behind the handshake, chunks queued in the pipe)
go out without waiting for a thread hand-over.
"""
from __future__ import annotations

from typing import Callable, Optional

from v2sync.common.errors import detached
from v2sync.common.signal import ActivityTimer
from v2sync.common.task import run_pair
from v2sync.features.proxy import ProxyContext
from v2sync.infra.conf.model import LevelPolicy
from v2sync.transport.copy import (copy_conn_to_pipe, copy_pipe_to_conn, flush_ready,
                                   write_or_stop)
from v2sync.transport.internet.conn import Connection
from v2sync.transport.link import Link

Direction = Callable[[ActivityTimer], None]

# Extra seconds past the longest policy timeout before a stuck copy thread is given up on;
# normally the timer has aborted the connection long before.
JOIN_SLACK = 5.0


def run_relay(ctx: ProxyContext, name: str, policy: LevelPolicy, conn: Optional[Connection],
              abort: Callable[[], None], request: Direction, response: Direction,
              first: Optional[Direction] = None) -> Optional[BaseException]:
    """Run ``first`` (if any), then both directions to completion; returns the first error
    (None on a clean finish).

    ``conn``, the stream both directions share, is made blocking here, once, before the
    pair starts: the activity timer bounds the relay, not a socket timeout. A socket's
    timeout belongs to the socket, and changing it while the other thread is inside send()
    makes that send fail with EAGAIN.
    """
    if conn is not None:
        conn.settimeout(None)
    timer = ctx.timers.new_timer(policy.conn_idle, abort)

    def request_side() -> None:
        request(timer)
        timer.set_timeout(policy.downlink_only)

    def response_side() -> None:
        response(timer)
        timer.set_timeout(policy.uplink_only)

    longest = max(policy.conn_idle, policy.uplink_only, policy.downlink_only)
    try:
        if first is not None:
            try:
                first(timer)
            except Exception as exc:  # as run_pair's guard does: abort, report
                abort()
                return detached(exc)
        return run_pair(ctx.threads, f"relay-{name}-up", request_side, response_side,
                        lambda exc: abort(), longest + JOIN_SLACK)
    finally:
        timer.cancel()


def relay_stream(ctx: ProxyContext, name: str, policy: LevelPolicy, conn: Connection,
                 link: Link, early: bytes = b"") -> Optional[BaseException]:
    """An inbound's raw byte relay (SOCKS CONNECT, HTTP CONNECT): client <-> link.

    ``early`` are bytes the client pipelined behind its handshake; they go first.
    """
    def abort() -> None:
        conn.abort()
        link.interrupt()

    outbound_reading = True

    def first(timer: ActivityTimer) -> None:
        nonlocal outbound_reading
        outbound_reading = not early or write_or_stop(link.writer, early)

    def request(timer: ActivityTimer) -> None:
        if outbound_reading:
            copy_conn_to_pipe(conn, link.writer, timer)
        link.writer.close()

    def response(timer: ActivityTimer) -> None:
        copy_pipe_to_conn(link.reader, conn, timer)

    return run_relay(ctx, name, policy, conn, abort, request, response, first)


def relay_upstream(ctx: ProxyContext, name: str, policy: LevelPolicy, conn: Connection,
                   link: Link, leftover: bytes = b"") -> Optional[BaseException]:
    """An outbound's raw byte relay once its handshake is done (freedom, HTTP CONNECT,
    SOCKS CONNECT): link <-> upstream. ``leftover``: bytes the upstream sent right behind
    its handshake reply; they reach the client first."""
    def abort() -> None:
        conn.abort()
        link.interrupt()

    def first(timer: ActivityTimer) -> None:
        if leftover:
            link.writer.write(leftover)
        flush_ready(link.reader, conn, timer)  # the client's payload, if queued

    def request(timer: ActivityTimer) -> None:
        copy_pipe_to_conn(link.reader, conn, timer)

    def response(timer: ActivityTimer) -> None:
        copy_conn_to_pipe(conn, link.writer, timer)
        link.writer.close()

    return run_relay(ctx, name, policy, conn, abort, request, response, first)
