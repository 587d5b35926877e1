"""Apply a ``LogConfig``: where the error and access logs go, and at which level.

Lines get v2ray's format (``2026/11/24 19:36:20 [Warning] ...``), except from a console
handler that comes with its own formatter: rich's shows the time and level in its own
columns, so the CLI gives it ``MESSAGE_FORMAT`` and each line has one time and one level.
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from logging.handlers import QueueHandler
from typing import Callable, List, Optional, Tuple

from v2sync.app.log.access import ACCESS_LOGGER
from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.infra.conf.model import LogConfig

DATE_FORMAT = "%Y/%m/%d %H:%M:%S"
ERROR_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"
ACCESS_FORMAT = "%(asctime)s %(message)s"
MESSAGE_FORMAT = "%(message)s"  # for a handler that shows time and level itself
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
# v2ray writes level names capitalised: [Debug] [Info] [Warning] [Error]
LEVEL_NAMES = {logging.DEBUG: "Debug", logging.INFO: "Info", logging.WARNING: "Warning",
               logging.ERROR: "Error", logging.CRITICAL: "Error"}

ConsoleFactory = Callable[[str], logging.Handler]
# 4.34's file logger (common/log/logger.go) closes its file once a minute has passed without
# a line (a ticker checks every minute) and opens the path again for the next line.
FILE_IDLE = 60.0  # seconds
FILE_MODE = 0o600  # as 4.34 creates it: the access log names clients and users
# Lines waiting for a log's writer thread. A reader that is slow or stopped (a terminal
# paused with Ctrl-S, a pipe nobody reads) fills it, and new lines are dropped, as 4.34's
# logger drops them once its buffer of 16 is full: no connection waits on the log. Every
# thread that logged used to write in turn: with stdout unread, its 64 KiB pipe filled
# after ~1,000 connections and the proxy stopped (4.34 went on).
MAX_QUEUED_LINES = 4096
# How long a flush, a reload or the exit waits for lines already queued to be written.
WRITER_WAIT = 2.0


class V2RayFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname = LEVEL_NAMES.get(record.levelno, record.levelname)
        return super().format(record)


def plain_console(kind: str) -> logging.Handler:
    return logging.StreamHandler(sys.stdout)


def _handler(target: Optional[str], kind: str, console: ConsoleFactory) -> Optional[logging.Handler]:
    if target is None:
        return None
    handler = console(kind) if target == "" else _file_handler(target, kind)
    if handler.formatter is None:
        fmt = ERROR_FORMAT if kind == "error" else ACCESS_FORMAT
        handler.setFormatter(V2RayFormatter(fmt, DATE_FORMAT))
    return handler


class LogFile(logging.FileHandler):
    """A log file as 4.34 writes one: created with mode 0600, and opened at its path again
    by the first line after ``FILE_IDLE`` seconds without one, so a file logrotate moved
    away is let go with no signal (4.34 closes it after one to two quiet minutes). A path
    that cannot be opened then keeps the old file: no line is lost."""

    def __init__(self, path: str):
        # opened now: a refusal is a config error. Bytes that are not UTF-8 (a sniffed name,
        # kept with surrogateescape) are written back as they came, as 4.34 writes them.
        super().__init__(path, encoding="utf-8", errors="surrogateescape")
        self._last = time.monotonic()
        self._failing = False  # lines are being lost (handleError): said once per streak
        self._failed_now = False

    def _open(self):
        fd = os.open(self.baseFilename, os.O_APPEND | os.O_WRONLY | os.O_CREAT, FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()  # called under the handler's lock
        if now - self._last >= FILE_IDLE and self.stream is not None:
            try:
                self._swap(self._open())
            except OSError:
                pass  # the old file goes on
        self._last = now
        self._failed_now = False
        super().emit(record)
        if self._failing and not self._failed_now:
            self._failing = False  # written again: a later failure is said again

    def handleError(self, record: logging.LogRecord) -> None:
        """A line that cannot be written (a full disk, a file gone read-only) is dropped,
        as 4.34 drops it. logging printed a traceback to stderr for each such line, ~3 KB a
        connection into the journal; the failure is now said once, on one line, until a
        line is written again (found by a review)."""
        self._failed_now = True
        if self._failing:
            return
        self._failing = True
        error = sys.exc_info()[1]
        try:
            sys.stderr.write(f"v2sync: cannot write to log file {self.baseFilename}: {error}; "
                             "lines are dropped until it can\n")
        except (OSError, ValueError):
            pass

    def reopen(self) -> None:
        """Open the path again now (SIGHUP, the API's RestartLogger). The new file is
        opened before the old one is closed, so a failure (OSError) loses no line and
        leaves no closed stream for the next line to fail on."""
        stream = self._open()
        self.acquire()
        try:
            self._swap(stream)
        finally:
            self.release()

    def _swap(self, stream) -> None:
        old, self.stream = self.stream, stream
        if old is not None:
            try:
                old.close()
            except OSError:  # its last lines could not be written (a full disk): lost
                pass


class LineQueue(QueueHandler):
    """Hands each line to the process's log writer thread, which writes it to ``target``;
    drops it when MAX_QUEUED_LINES wait (``dropped`` counts them). One writer for every
    log, so lines reach a console shared by the error and access logs in the order they
    were logged."""

    def __init__(self, target: logging.Handler, writer: Optional["LogWriter"] = None):
        self.writer = writer or _process_writer()
        super().__init__(self.writer.lines)
        self.target = target
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The message made now, from the arguments as they are; the rest of the line
        (time, level) is the target's to format, in the writer thread."""
        record.msg, record.args = record.getMessage(), None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.writer.lines.put_nowait((self.target, record))
        except queue.Full:
            self.dropped += 1

    def flush(self) -> None:
        """Wait (WRITER_WAIT at most) for the lines queued to be written."""
        self.writer.wait_written(WRITER_WAIT)
        self.target.flush()

    def close(self) -> None:
        """Write what is queued (WRITER_WAIT at most: a reader that never reads keeps the
        rest), then close ``target``."""
        self.flush()
        self.target.close()
        super().close()


Line = Tuple[logging.Handler, logging.LogRecord]


class LogWriter:
    """The thread that writes every log's lines, a daemon: at exit, ``logging.shutdown``
    closes each ``LineQueue``, which waits for its lines first."""

    def __init__(self, size: int = MAX_QUEUED_LINES) -> None:
        self.lines: "queue.Queue[Line]" = queue.Queue(size)
        threading.Thread(target=self._write, name="log-writer", daemon=True).start()

    def _write(self) -> None:
        while True:
            target, record = self.lines.get()
            try:
                target.handle(record)
            finally:
                self.lines.task_done()

    def wait_written(self, timeout: float) -> None:
        lines = self.lines
        with lines.all_tasks_done:
            lines.all_tasks_done.wait_for(lambda: not lines.unfinished_tasks, timeout)


_the_writer: Optional[LogWriter] = None
_writer_lock = threading.Lock()


def _process_writer() -> LogWriter:
    global _the_writer
    with _writer_lock:
        if _the_writer is None:
            _the_writer = LogWriter()
        return _the_writer


def _file_handler(target: str, kind: str) -> logging.Handler:
    try:
        return LogFile(target)
    except (OSError, ValueError) as e:  # 4.34: "failed to initialize error logger > open
        # ...", exit 23; ValueError: a NUL byte in the path ("invalid argument" in 4.34)
        raise ConfigError(f"cannot open {target!r}: {_reason(e)}", f"log.{kind}",
                          expected='expected a writable file, "" (stdout) or "none"') from None


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _targets(config: LogConfig) -> Tuple[Tuple[str, Optional[str]], ...]:
    if config.level == "none":
        return (("error", None), ("access", None))
    return (("error", config.error), ("access", config.access))


def check_files(config: LogConfig) -> None:
    """Open (creating) and close each log file, as ``v2ray -test`` does: it refuses a config
    whose log it cannot open. Raises ConfigErrors naming each."""
    errors: List[ConfigError] = []
    for kind, target in _targets(config):
        if target:
            try:
                _file_handler(target, kind).close()
            except ConfigError as e:
                errors.append(e)
    if errors:
        raise ConfigErrors(errors)


def _install(logger: logging.Logger, handler: Optional[logging.Handler], level: int) -> None:
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.propagate = False
    if handler is None:
        logger.setLevel(logging.CRITICAL + 1)
        return
    logger.addHandler(LineQueue(handler))
    logger.setLevel(level)


def configure(config: LogConfig, console: ConsoleFactory = plain_console) -> None:
    """Route ``v2sync.*`` to the error log and ``v2sync.access`` to the access log."""
    (_, error_target), (_, access_target) = _targets(config)
    _install(logging.getLogger("v2sync"), _handler(error_target, "error", console),
             LEVELS.get(config.level, logging.WARNING))
    _install(logging.getLogger(ACCESS_LOGGER), _handler(access_target, "access", console),
             logging.INFO)


def reopen_files() -> int:
    """Reopen every log file at its path (the API's RestartLogger, for logrotate: the old
    file was moved away, new lines go to a new file). Returns how many were reopened.
    Raises OSError for a path that cannot be opened (its directory is gone): that file's
    lines go on to the old file, and the files before it are reopened already."""
    handlers = [handler for name in ("v2sync", ACCESS_LOGGER)
                for handler in _targets_of(logging.getLogger(name))
                if isinstance(handler, LogFile)]
    for handler in handlers:
        handler.reopen()
    return len(handlers)


def _targets_of(logger: logging.Logger) -> List[logging.Handler]:
    return [getattr(handler, "target", handler) for handler in logger.handlers]
