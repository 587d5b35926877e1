"""conf/v2sync.service and conf/v2sync@.service: systemd accepts them (``systemd-analyze
verify``), they are hardened as Debian's v2ray.service, and their commands are v2sync
commands that work (ExecStartPre's check passes on a good config and fails on a bad one)."""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
UNITS = ["v2sync.service", "v2sync@.service"]
INSTALLED = "/opt/v2sync/bin/v2sync"
TIMEOUT = 30


def _service(name: str) -> Dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment]  # systemd keys are case-sensitive
    parser.read(REPO_ROOT / "conf" / name)
    return dict(parser["Service"])


@pytest.mark.parametrize("name", UNITS)
def test_hardened_as_debian_v2ray(name: str) -> None:
    service = _service(name)
    assert service["DynamicUser"] == "true"
    assert service["NoNewPrivileges"] == "true"
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert set(service[key].split()) == {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "StandardOutput" not in service  # the journal, systemd's default
    config = "/etc/v2sync/config.json" if name == "v2sync.service" else "/etc/v2sync/%i.json"
    assert service["ExecStartPre"] == f"{INSTALLED} test -c {config}"
    assert service["ExecStart"] == f"{INSTALLED} run -c {config}"


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_accepts(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze (package systemd) is missing")
        pytest.skip("systemd-analyze is not installed")
    wrapper = tmp_path / "v2sync"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m v2sync \"$@\"\n")
    wrapper.chmod(0o755)
    text = (REPO_ROOT / "conf" / name).read_text().replace(INSTALLED, str(wrapper))
    unit = tmp_path / (name.replace("@", "@check") if "@" in name else name)
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


BAD_CONFIG = '{"inbounds": [{"protocol": "socks", "port": "not a port"}]}'


@pytest.mark.parametrize("good", [True, False], ids=["good", "bad"])
def test_exec_start_pre_gates_the_start(good: bool, tmp_path: Path) -> None:
    config = REPO_ROOT / "conf" / "config.json"
    if not good:
        config = tmp_path / "config.json"
        config.write_text(BAD_CONFIG)
    code = 0 if good else 23
    command = _service("v2sync.service")["ExecStartPre"].split()
    args = [a.replace("/etc/v2sync/config.json", str(config)) for a in command[1:]]
    result = subprocess.run([sys.executable, "-m", "v2sync", *args], capture_output=True,
                            text=True, timeout=TIMEOUT, cwd=str(REPO_ROOT))
    assert result.returncode == code, result.stdout
    assert ("Configuration OK." in result.stdout) == (code == 0)
