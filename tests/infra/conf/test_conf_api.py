"""The ``api``, ``stats`` and ``metrics`` sections: what 4.34 refuses is refused (checked
against ``v2ray -test``), v2sync's own ``metrics`` key is checked and ignored by 4.34."""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from v2sync.common.errors import ConfigError
from v2sync.infra.conf.builder import config_from_dict

OUT = {"outbounds": [{"tag": "direct", "protocol": "freedom"}]}


def v2ray_test(v2ray_bin: str, tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    return subprocess.run([v2ray_bin, "-test", "-config", str(path)], capture_output=True,
                          text=True, timeout=30)


def test_api_is_built() -> None:
    config = config_from_dict({**OUT, "api": {"tag": "api", "services": [
        "statsservice", "HandlerService", "StatsService"]}, "stats": {}})
    assert config.api is not None and config.api.tag == "api"
    assert config.api.services == ("StatsService", "HandlerService")
    assert config.stats_enabled and config.metrics is None


def test_empty_api_tag_is_refused_as_4_34_refuses_it(v2ray_bin: str, tmp_path: Path) -> None:
    document = {**OUT, "api": {"services": ["StatsService"]}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(document)
    assert "api.tag" in str(info.value) and "API tag can't be empty." in str(info.value)
    result = v2ray_test(v2ray_bin, tmp_path, document)
    assert result.returncode == 23 and "API tag can't be empty" in result.stdout


def test_unknown_service_is_a_warning(caplog, v2ray_bin: str, tmp_path: Path) -> None:
    document = {**OUT, "api": {"tag": "api", "services": ["ReflectionService", "Nope"]}}
    with caplog.at_level(logging.WARNING):
        config = config_from_dict(document)
    assert config.api is not None and config.api.services == ()
    assert "ReflectionService" in caplog.text and "'Nope' is not served" in caplog.text
    assert v2ray_test(v2ray_bin, tmp_path, document).returncode == 0  # 4.34 skips them


def test_metrics_key(v2ray_bin: str, tmp_path: Path) -> None:
    document = {**OUT, "metrics": {"listen": "[::1]:9550"}}
    config = config_from_dict(document)
    assert config.metrics is not None
    assert (config.metrics.listen, config.metrics.port) == ("::1", 9550)
    assert v2ray_test(v2ray_bin, tmp_path, document).returncode == 0  # 4.34 ignores it
    with pytest.raises(ConfigError) as info:
        config_from_dict({**OUT, "metrics": {"listen": "9550"}})
    assert "metrics.listen" in str(info.value)


def test_api_tag_taken_by_an_outbound_is_refused() -> None:
    from v2sync.core import Instance

    config = config_from_dict({**OUT, "api": {"tag": "direct", "services": []}})
    with pytest.raises(ConfigError) as info:
        Instance(config)
    assert "duplicate outbound tag 'direct'" in str(info.value)
