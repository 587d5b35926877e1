"""Console log lines: one time and one level each, on a terminal (rich) and off it (plain)."""
from __future__ import annotations

import io
import logging
import re
import sys
from typing import Iterator

import pytest
from rich.console import Console

from v2sync.app.log.access import ACCESS_LOGGER
from v2sync.app.log.setup import configure
from v2sync.cli import rich_handler
from v2sync.infra.conf.model import LogConfig

TIME = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOGGERS = ("v2sync", ACCESS_LOGGER)


@pytest.fixture(autouse=True)
def restore_loggers() -> Iterator[None]:
    """configure() rewires the v2sync loggers; put them back for the other tests."""
    saved = [(logging.getLogger(name), logging.getLogger(name).handlers[:],
              logging.getLogger(name).level, logging.getLogger(name).propagate) for name in LOGGERS]
    yield
    for logger, handlers, level, propagate in saved:
        for handler in logger.handlers[:]:
            logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def emit_lines(console_factory) -> None:
    configure(LogConfig(access="", error="", level="info"), console_factory)
    logging.getLogger("v2sync.core").warning("v2sync %s started", "0.1.0")
    logging.getLogger(ACCESS_LOGGER).info("127.0.0.1:1 accepted tcp:example.com:443")
    for handler in logging.getLogger("v2sync").handlers + logging.getLogger(ACCESS_LOGGER).handlers:
        handler.flush()


def test_terminal_lines_carry_one_time_and_one_level() -> None:
    # rich's handler shows time and level in its own columns; the formatter adds neither
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200, color_system="standard")
    emit_lines(lambda kind: rich_handler(kind, console))
    lines = [ANSI.sub("", line).rstrip() for line in screen.getvalue().splitlines()]
    started = next(line for line in lines if "started" in line)
    access = next(line for line in lines if "accepted" in line)
    assert len(TIME.findall(started)) == 1 and started.count("Warning") == 1, started
    assert "[Warning]" not in started and started.endswith("v2sync 0.1.0 started")
    assert len(TIME.findall(access)) == 1 and "Info" not in access, access  # no level, as v2ray


def test_plain_lines_keep_v2rays_format(capsys: pytest.CaptureFixture[str]) -> None:
    emit_lines(lambda kind: logging.StreamHandler(sys.stdout))
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(TIME.pattern + r" \[Warning\] v2sync 0\.1\.0 started", lines[0]), lines
    assert re.fullmatch(TIME.pattern + r" 127\.0\.0\.1:1 accepted tcp:example\.com:443",
                        lines[1]), lines
