"""The relay's copy loops (v2ray ``common/buf/copy.go`` with ``UpdateActivity``).

During the relay, sockets block without a timeout: the connection's ``ActivityTimer`` is the
bound. When it expires it aborts the connection and interrupts the link, which unblocks
every loop below at once; a per-read socket timeout would cost a poll() per read for nothing.
"""
from __future__ import annotations

from v2sync.common.signal import ActivityTimer
from v2sync.transport.internet.conn import RELAY_READ_SIZE, Connection
from v2sync.transport.pipe import EOF, Pipe


def copy_conn_to_pipe(conn: Connection, pipe: Pipe, timer: ActivityTimer) -> int:
    """Copy until the connection's EOF; returns the byte count. Does not close ``pipe``."""
    total = 0
    conn.settimeout(None)
    while True:
        data = conn.read(RELAY_READ_SIZE)
        if not data:
            return total
        timer.update()
        pipe.write(data)
        total += len(data)


def copy_pipe_to_conn(pipe: Pipe, conn: Connection, timer: ActivityTimer) -> int:
    """Copy until the pipe's EOF; returns the byte count. Does not close ``conn``."""
    total = 0
    while True:
        chunk = pipe.read()
        if chunk is EOF:
            return total
        timer.update()
        conn.write(chunk)
        total += len(chunk)
