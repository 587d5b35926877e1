"""``LineQueue``: each log's lines go to a writer thread through a bounded queue; a
writer stuck on a reader that does not read costs the loggers nothing but the lines
past MAX_QUEUED_LINES (socket-free)."""
from __future__ import annotations

import logging
import threading
from typing import List

from v2sync.app.log import setup
from v2sync.app.log.setup import LineQueue, LogWriter

WAIT = 5.0


class Recording(logging.Handler):
    """Keeps each message; waits for ``gate`` before each while it is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.messages: List[str] = []
        self.closed = False

    def emit(self, record: logging.LogRecord) -> None:
        assert self.gate.wait(WAIT)
        self.messages.append(record.getMessage())

    def close(self) -> None:
        self.closed = True
        super().close()


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("v2sync.test", logging.WARNING, __file__, 1, message, args, None)


def test_lines_of_two_logs_reach_their_targets_in_order_and_close_writes_what_waits() -> None:
    errors, access = Recording(), Recording()
    error_lines, access_lines = LineQueue(errors), LineQueue(access)
    for i in range(100):
        (error_lines if i % 3 else access_lines).handle(_record("line %d", i))
    error_lines.close()
    access_lines.close()
    assert errors.messages == [f"line {i}" for i in range(100) if i % 3] and errors.closed
    assert access.messages == [f"line {i}" for i in range(0, 100, 3)] and access.closed


def test_a_stuck_writer_drops_lines_past_the_queue_and_never_blocks_the_logger() -> None:
    target = Recording()
    target.gate.clear()  # the reader stopped reading
    lines = LineQueue(target, LogWriter(10))
    logged = threading.Thread(target=lambda: [lines.handle(_record("x")) for _ in range(50)])
    logged.start()
    logged.join(WAIT)
    assert not logged.is_alive()  # it never waited on the stuck writer
    assert 39 <= lines.dropped <= 40  # ten queued, one perhaps in the writer's hands
    target.gate.set()
    lines.flush()
    assert len(target.messages) == 50 - lines.dropped
    lines.close()


def test_flush_waits_for_the_lines_queued_and_the_message_is_made_when_logged() -> None:
    target = Recording()
    lines = LineQueue(target)
    later = ["before"]
    for i in range(20):
        lines.handle(_record("line %d %s", i, later))
    later[0] = "after"  # an argument that changes once the line is logged
    lines.flush()
    assert target.messages == [f"line {i} ['before']" for i in range(20)]
    lines.close()


def test_one_writer_thread_serves_every_log() -> None:
    assert LineQueue(Recording()).writer is LineQueue(Recording()).writer
    assert setup.MAX_QUEUED_LINES >= 1024
