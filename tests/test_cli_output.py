"""What ``v2sync test`` prints and how it exits, whatever the input or the stdout.

Exit 0 with "Configuration OK.", or 23 with at most 50 errors and a count of the rest; a
closed stdout (``v2sync test | head``) ends quietly with the same exit code. Processes run
with a memory limit, so a regression that reads ``/dev/zero`` whole fails instead of
filling the machine.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from v2sync import cli
from v2sync.infra.conf.validate import MAX_CHECKED_ERRORS, MAX_SHOWN

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI_TIMEOUT = 60.0
MEMORY_LIMIT = 1024 * 1024 * 1024  # address space of a CLI process under test
FREEDOM = {"protocol": "freedom"}


def run_main(*args: str) -> Tuple[int, List[str]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(args))
    return code, out.getvalue().splitlines()


def write(tmp_path: Path, doc: Any, name: str = "c.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_process(*args: str, stdin: bytes = b"", close_stdout: bool = False
                ) -> Tuple[int, bytes, bytes]:
    """``python -m v2sync ARGS``: exit code, stdout, stderr. ``close_stdout`` closes the
    reading end of its stdout before it writes anything, as ``| head`` does in the end."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen([sys.executable, "-m", "v2sync", *args], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=_limit_memory)
    assert process.stdout is not None
    if close_stdout:
        process.stdout.close()
        out = b""
        _, err = process.communicate(stdin, timeout=CLI_TIMEOUT)
    else:
        out, err = process.communicate(stdin, timeout=CLI_TIMEOUT)
    return process.returncode, out, err


def bad_inbounds(count: int) -> Dict[str, Any]:
    return {"inbounds": [{"protocol": "socks", "port": f"bad{i}"} for i in range(count)],
            "outbounds": [FREEDOM]}


# --------------------------------------------------------------------------- exit codes


def test_ok_config_exits_0(tmp_path: Path) -> None:
    assert run_main("test", "-c", write(tmp_path, {"outbounds": [FREEDOM]})) == \
        (0, ["Configuration OK."])


def test_errors_are_capped_at_50_with_a_count(tmp_path: Path) -> None:
    code, lines = run_main("test", "-c", write(tmp_path, bad_inbounds(120)))
    assert code == cli.EXIT_CONFIG_ERROR
    assert len(lines) == 1 + MAX_SHOWN + 1 == 52
    assert lines[0] == "v2sync: failed to load config:"
    assert lines[MAX_SHOWN].endswith(
        "inbounds[49].port: invalid port 'bad49' "
        "(expected an integer 0-65535, a range \"a-b\" or \"env:VAR\")")
    assert lines[-1] == "  … and 70 more"


def test_checking_stops_after_1000_errors_and_says_so(tmp_path: Path) -> None:
    code, lines = run_main("test", "-c", write(tmp_path, bad_inbounds(MAX_CHECKED_ERRORS + 5)))
    assert code == cli.EXIT_CONFIG_ERROR
    assert lines[1].endswith("c.json: too many errors: checking stopped after the first 1,000")
    assert lines[-1] == f"  … and {MAX_CHECKED_ERRORS + 1 - MAX_SHOWN} more"


def test_fifty_errors_print_without_a_count(tmp_path: Path) -> None:
    code, lines = run_main("test", "-c", write(tmp_path, bad_inbounds(MAX_SHOWN)))
    assert (code, len(lines)) == (cli.EXIT_CONFIG_ERROR, 1 + MAX_SHOWN)


def test_warnings_are_capped_per_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    doc = {"outbounds": [FREEDOM], **{f"unknown{i}": 1 for i in range(120)}}
    with caplog.at_level(logging.WARNING):
        assert run_main("test", "-c", write(tmp_path, doc))[0] == 0
    warnings = [r.getMessage() for r in caplog.records if r.name.endswith("validate")]
    assert len(warnings) == MAX_SHOWN + 1 and warnings[-1] == "… and 70 more"


def test_deep_nesting_v2ray_accepts_is_ok(tmp_path: Path) -> None:
    text = '{"outbounds": [{"protocol": "freedom"}], "x": ' + "[" * 1_000 + "]" * 1_000 + "}"
    (tmp_path / "deep.json").write_text(text)
    assert run_main("test", "-c", str(tmp_path / "deep.json")) == (0, ["Configuration OK."])


def test_an_internal_error_is_one_line_and_exit_23(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("v2sync.infra.conf.builder.load_config", broken)
    assert run_main("test", "-c", write(tmp_path, {})) == (cli.EXIT_CONFIG_ERROR, [
        "v2sync: failed to load config: internal error: RuntimeError: boom"])


@pytest.mark.parametrize("command", ["test", "run"])
def test_a_log_file_that_cannot_be_opened_is_a_config_error(tmp_path: Path, command: str) -> None:
    # v2ray -test: "failed to initialize error logger > open ...: no such file", exit 23
    doc = {"log": {"error": str(tmp_path / "missing" / "e.log")}, "outbounds": [FREEDOM]}
    code, lines = run_main(command, "-c", write(tmp_path, doc))
    assert (code, lines[1:]) == (cli.EXIT_CONFIG_ERROR, [
        f"  log.error: cannot open {str(tmp_path / 'missing' / 'e.log')!r}: No such file or "
        "directory (expected a writable file, \"\" (stdout) or \"none\")"])


def test_test_creates_the_log_files_as_v2ray_does(tmp_path: Path) -> None:
    doc = {"log": {"access": str(tmp_path / "a.log"), "loglevel": "info"}, "outbounds": [FREEDOM]}
    assert run_main("test", "-c", write(tmp_path, doc))[0] == 0
    assert (tmp_path / "a.log").exists()


# --------------------------------------------------------------------------- processes


def test_dev_zero_is_refused_quickly() -> None:
    code, out, err = run_process("test", "-c", "/dev/zero")
    assert (code, err) == (cli.EXIT_CONFIG_ERROR, b"")
    assert out.decode().splitlines() == [
        "v2sync: failed to load config:",
        "  /dev/zero: config is larger than 64 MiB (expected at most 64 MiB)"]


@pytest.mark.parametrize("doc, expected_code", [
    (bad_inbounds(3), cli.EXIT_CONFIG_ERROR),
    ({"outbounds": [FREEDOM], "unknownKey": 1}, 0),  # OK, with a warning line first
])
def test_closed_stdout_exits_quietly_with_the_same_code(tmp_path: Path, doc: Dict[str, Any],
                                                        expected_code: int) -> None:
    code, _, err = run_process("test", "-c", write(tmp_path, doc), close_stdout=True)
    assert (code, err.decode()) == (expected_code, "")


def test_closed_stdout_for_version_too() -> None:
    assert run_process("version", close_stdout=True)[::2] == (0, b"")


def test_non_utf8_stdin_is_read_as_v2ray_reads_it() -> None:
    doc = b'{"outbounds": [{"protocol": "freedom", "tag": "caf\xe9"}], "k\xe9y": 1}'
    code, out, err = run_process("test", "-c", "-", stdin=doc)
    assert (code, err) == (0, b"")
    lines = out.decode("utf-8").splitlines()
    assert lines[0].startswith("WARNING -: not UTF-8 at byte ")
    assert lines[1:] == ["WARNING -: [\"k\\ufffdy\"]: unknown key 'k\ufffdy' ignored",
                         "Configuration OK."]
