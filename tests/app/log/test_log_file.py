"""Log files as 4.34 keeps them (``common/log/logger.go``): created with mode 0600 (compared
with ``v2ray -test``, which creates them too), and opened at their path again by the first
line after a quiet minute, so a file logrotate moved away is let go without a signal.

4.34 closes the file one to two minutes after its last line (a minute's ticker finds
nothing written) and opens the path for the next one; a review saw it write to a new file
after 130 s. Waiting that long here is too slow, so the quiet time is shortened for these
tests (``FILE_IDLE``); the minute is 4.34's constant.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from support.procs import REPO_ROOT
from v2sync.app.log import setup
from v2sync.app.log.setup import LogFile

QUIET = 0.05  # seconds: FILE_IDLE in these tests
TIMEOUT = 30.0


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup, "FILE_IDLE", QUIET)


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[LogFile]:
    handler = LogFile(str(tmp_path / "access.log"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    yield handler
    handler.close()


def write(handler: LogFile, message: str) -> None:
    handler.handle(logging.LogRecord("v2sync.access", logging.INFO, __file__, 0, message,
                                     None, None))


def test_a_moved_file_is_let_go_after_a_quiet_time(quiet: None, log_file: LogFile,
                                                   tmp_path: Path) -> None:
    write(log_file, "one")
    os.rename(tmp_path / "access.log", tmp_path / "access.log.1")
    write(log_file, "two")  # at once: still the open file
    time.sleep(QUIET * 2)
    write(log_file, "three")  # after a quiet time: the path again, a new file
    assert (tmp_path / "access.log.1").read_text() == "one\ntwo\n"
    assert (tmp_path / "access.log").read_text() == "three\n"


def test_lines_that_keep_coming_stay_in_one_file(quiet: None, log_file: LogFile,
                                                 tmp_path: Path) -> None:
    write(log_file, "one")
    os.rename(tmp_path / "access.log", tmp_path / "access.log.1")
    for n in range(5):
        time.sleep(QUIET / 5)
        write(log_file, str(n))
    assert (tmp_path / "access.log.1").read_text() == "one\n0\n1\n2\n3\n4\n"
    assert not (tmp_path / "access.log").exists()


def test_a_path_that_cannot_be_opened_again_keeps_the_old_file(quiet: None,
                                                               tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    handler = LogFile(str(tmp_path / "logs" / "error.log"))
    try:
        write(handler, "one")
        os.rename(tmp_path / "logs", tmp_path / "moved")  # the path's directory is gone
        time.sleep(QUIET * 2)
        write(handler, "two")
    finally:
        handler.close()
    assert (tmp_path / "moved" / "error.log").read_text() == "one\ntwo\n"


def test_reopen_opens_the_path_now(log_file: LogFile, tmp_path: Path) -> None:
    write(log_file, "one")
    os.rename(tmp_path / "access.log", tmp_path / "access.log.1")
    log_file.reopen()
    write(log_file, "two")
    assert (tmp_path / "access.log").read_text() == "two\n"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_created_0600_as_4_34_creates_them(tmp_path: Path, v2ray_bin: str) -> None:
    """``-test`` opens (creating) both files in each implementation, under umask 022."""
    modes = {}
    for name, command in (("v2ray", [v2ray_bin, "-test"]),
                          ("v2sync", [sys.executable, "-m", "v2sync", "test"])):
        folder = tmp_path / name
        folder.mkdir()
        config = {"log": {"access": str(folder / "a.log"), "error": str(folder / "e.log")},
                  "outbounds": [{"protocol": "freedom"}]}
        (folder / "c.json").write_text(json.dumps(config))
        done = subprocess.run([*command, "-config", str(folder / "c.json")], cwd=folder,
                              env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                              capture_output=True, timeout=TIMEOUT,
                              preexec_fn=lambda: os.umask(0o022))
        assert done.returncode == 0, done.stdout + done.stderr
        modes[name] = (_mode(folder / "a.log"), _mode(folder / "e.log"))
    assert modes["v2sync"] == modes["v2ray"] == (0o600, 0o600)


def test_bytes_that_are_not_utf_8_are_written_as_they_came(log_file: LogFile, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A sniffed name kept with ``surrogateescape`` (bytes that are not UTF-8): 4.34 writes
    them raw; a strict file failed the line with "--- Logging error ---" (found by a
    review)."""
    failures = []
    monkeypatch.setattr(log_file, "handleError", failures.append)
    write(log_file, b"sniffed domain: bad\xff\xfename.test".decode("utf-8", "surrogateescape"))
    log_file.flush()
    assert failures == []
    assert (tmp_path / "access.log").read_bytes() == b"sniffed domain: bad\xff\xfename.test\n"


def test_a_nul_byte_in_a_log_path_is_a_config_error(tmp_path: Path) -> None:
    """Both refuse such a config; 4.34 says "invalid argument" about the file, v2sync said
    "internal error: ValueError" (found by a review). Each file is named."""
    from v2sync.common.errors import ConfigError
    from v2sync.infra.conf.model import LogConfig
    bad = str(tmp_path / "a\0.log")
    with pytest.raises(ConfigError) as info:
        setup.check_files(LogConfig(access=bad, error=bad))
    text = info.value.render()
    assert "log.access: cannot open" in text and "log.error: cannot open" in text
    assert "embedded null" in text  # "byte" or, on 3.13, "character in path"


def test_lines_that_cannot_be_written_are_dropped_and_said_once(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """/dev/full fails every write (ENOSPC), as a full log partition does: 4.34 drops the
    lines silently; logging printed a traceback per line. One line on stderr per streak of
    failures, again after a line was written."""
    handler = LogFile("/dev/full")
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "line", None, None)
    try:
        for _ in range(20):
            handler.emit(record)
        first = capsys.readouterr().err
        handler._swap(open(tmp_path / "ok.log", "a"))  # writable again
        handler.emit(record)
        handler._swap(open("/dev/full", "a"))
        handler.emit(record)
        second = capsys.readouterr().err
        handler._swap(open(tmp_path / "end.log", "a"))  # a full file's close fails: let go
    finally:
        handler.close()
    assert first.count("\n") == 1 and "cannot write to log file /dev/full" in first
    assert "Traceback" not in first + second
    assert second.count("\n") == 1
    assert (tmp_path / "ok.log").read_text() == "line\n"
