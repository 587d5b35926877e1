"""Every example in conf/ loads in v2sync and passes the real ``v2ray -test``."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from v2sync.infra.conf.builder import load_config

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO_ROOT / "conf").glob("*.json"))
V2RAY_TEST_TIMEOUT = 30


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_in_v2sync(path: Path) -> None:
    config = load_config([str(path)])
    assert config.outbounds, "every example needs an outbound"
    assert all(i.file == str(path) for i in config.inbounds)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_v2ray_test(path: Path, v2ray_bin: str, tmp_path: Path) -> None:
    # v2ray resolves nothing relative to its cwd for these configs; run it elsewhere anyway
    result = subprocess.run([v2ray_bin, "-test", "-config", str(path)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=V2RAY_TEST_TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Configuration OK" in output
