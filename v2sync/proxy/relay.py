"""The data phase shared by every handler (v2ray ``proxy/socks/server.go::transport``).

Two directions run as a thread pair: *request* (client -> target) in the caller's thread,
*response* (target -> client) in a pooled thread. One ``ActivityTimer`` covers both: any traffic
resets it; when the request side ends it becomes ``downlinkOnly``, when the response side
ends it becomes ``uplinkOnly``; when it expires the connection is aborted. Any error aborts
both directions at once.
"""
from __future__ import annotations

from typing import Callable, Optional

from v2sync.common.signal import ActivityTimer
from v2sync.common.task import run_pair
from v2sync.features.proxy import ProxyContext
from v2sync.infra.conf.model import LevelPolicy
from v2sync.transport.copy import copy_conn_to_pipe, copy_pipe_to_conn, write_or_stop
from v2sync.transport.internet.conn import Connection
from v2sync.transport.link import Link

Direction = Callable[[ActivityTimer], None]

# Extra seconds past the longest policy timeout before a stuck copy thread is given up on;
# normally the timer has aborted the connection long before.
JOIN_SLACK = 5.0


def run_relay(ctx: ProxyContext, name: str, policy: LevelPolicy, abort: Callable[[], None],
              request: Direction, response: Direction) -> Optional[BaseException]:
    """Run both directions to completion; returns the first error (None on a clean finish)."""
    timer = ctx.timers.new_timer(policy.conn_idle, abort)

    def request_side() -> None:
        request(timer)
        timer.set_timeout(policy.downlink_only)

    def response_side() -> None:
        response(timer)
        timer.set_timeout(policy.uplink_only)

    longest = max(policy.conn_idle, policy.uplink_only, policy.downlink_only)
    try:
        # The request runs in the thread that is already here: the client's first bytes
        # never wait for a thread to be handed over; the response is not due before a
        # round trip anyway.
        return run_pair(ctx.threads, f"relay-{name}-down", response_side, request_side,
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

    def request(timer: ActivityTimer) -> None:
        if early and not write_or_stop(link.writer, early):
            return
        copy_conn_to_pipe(conn, link.writer, timer)
        link.writer.close()

    def response(timer: ActivityTimer) -> None:
        copy_pipe_to_conn(link.reader, conn, timer)

    return run_relay(ctx, name, policy, abort, request, response)
