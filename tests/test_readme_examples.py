"""The README's try-it blocks (each after a ``<!-- try-it -->`` line) run as written.

Each block runs in bash inside a network namespace of its own (``unshare -n``, loopback
up), so its fixed ports (1080, 8080, 8000, 10086...) never meet another test's, with the
``v2sync`` command on PATH as an installed one would be and the repository as the working
directory, as the README says. Its curl lines must print the target's page.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- try-it -->"
BLOCK = re.compile(re.escape(MARKER) + r"\s*```sh\n(.*?)```", re.S)
TIMEOUT = 90
PAGE = "<h1>Directory listing for /</h1>"  # what python3 -m http.server serves for /


def _blocks() -> List[str]:
    return BLOCK.findall((REPO_ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_has_try_it_blocks() -> None:
    assert len(_blocks()) >= 2


def _can_unshare() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_try_it_block_runs_as_written(index: int, tmp_path: Path) -> None:
    if not _can_unshare():
        if os.environ.get("CI"):
            pytest.fail("unshare -n failed: CI needs root (or user namespaces) for this test")
        pytest.skip("cannot make a network namespace here (unshare -n)")
    block = _blocks()[index]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "v2sync").write_text(f"#!/bin/sh\nexec {sys.executable} -m v2sync \"$@\"\n")
    (bin_dir / "v2sync").chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)
    script = tmp_path / "block.sh"
    script.write_text("set -e\nip link set lo up\n" + block + "wait\n")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(REPO_ROOT), V2SYNC_CPU="all")
    result = subprocess.run(["unshare", "-n", "bash", str(script)], capture_output=True,
                            text=True, timeout=TIMEOUT, cwd=str(REPO_ROOT), env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    curls = sum(1 for line in block.splitlines() if line.startswith("curl "))
    assert result.stdout.count(PAGE) == curls, output
    assert "Traceback" not in output
