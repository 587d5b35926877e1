"""``proxySettings`` on an outbound: read as 4.34 reads it (checked against ``v2ray -test``).
The chaining itself runs in tests/scenarios/test_outbound_chain.py."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest

from v2sync.common.errors import ConfigError
from v2sync.infra.conf.builder import config_from_dict


def document(proxy_settings: Any) -> Dict[str, Any]:
    return {"outbounds": [
        {"tag": "main", "protocol": "freedom", "proxySettings": proxy_settings},
        {"tag": "via", "protocol": "socks",
         "settings": {"servers": [{"address": "127.0.0.1", "port": 1080}]}}]}


def v2ray_test(v2ray_bin: str, tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    return subprocess.run([v2ray_bin, "-test", "-config", str(path)], capture_output=True,
                          text=True, timeout=30)


def test_the_tag_is_kept(v2ray_bin: str, tmp_path: Path) -> None:
    config = config_from_dict(document({"tag": "via"}))
    assert [o.proxy_tag for o in config.outbounds] == ["via", None]
    assert v2ray_test(v2ray_bin, tmp_path, document({"tag": "via"})).returncode == 0


def test_a_tag_no_outbound_has_is_taken_as_4_34_takes_it(v2ray_bin: str,
                                                        tmp_path: Path) -> None:
    """4.34 looks the tag up at each dial; at start nothing checks it."""
    config = config_from_dict(document({"tag": "nobody"}))
    assert config.outbounds[0].proxy_tag == "nobody"
    assert v2ray_test(v2ray_bin, tmp_path, document({"tag": "nobody"})).returncode == 0


@pytest.mark.parametrize("settings", [{}, {"tag": ""}], ids=["no-tag", "empty-tag"])
def test_no_tag_is_refused_as_4_34_refuses_it(settings, v2ray_bin: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(document(settings))
    assert "outbounds[0].proxySettings.tag" in str(info.value)
    assert "Proxy tag is not set." in str(info.value)
    result = v2ray_test(v2ray_bin, tmp_path, document(settings))
    assert result.returncode == 23 and "Proxy tag is not set." in result.stdout


def freedom(tag: str, via: str = "") -> Dict[str, Any]:
    outbound: Dict[str, Any] = {"tag": tag, "protocol": "freedom"}
    if via:
        outbound["proxySettings"] = {"tag": via}
    return outbound


@pytest.mark.parametrize("outbounds, where, chain", [
    ([freedom("a", "a")], 0, "a -> a"),
    ([freedom("a", "b"), freedom("b", "a")], 0, "a -> b -> a"),
    ([freedom("x", "b"), freedom("b", "c"), freedom("c", "b")], 1, "b -> c -> b"),
], ids=["itself", "two", "entered-later"])
def test_a_chain_that_comes_back_is_refused_where_4_34_accepts_it(
        outbounds, where: int, chain: str, v2ray_bin: str, tmp_path: Path) -> None:
    """Kept different: each connection would carry itself without end (one connection
    grew 4.34 by 350 MB in 5 s), so the cycle is refused once, at its first outbound."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({"outbounds": outbounds})
    errors = str(info.value)
    assert f"outbounds[{where}].proxySettings.tag" in errors
    assert f"proxySettings chain {chain} comes back" in errors
    assert errors.count("comes back") == 1
    assert v2ray_test(v2ray_bin, tmp_path, {"outbounds": outbounds}).returncode == 0


def test_a_chain_that_ends_is_taken() -> None:
    config = config_from_dict({"outbounds": [freedom("a", "b"), freedom("b", "c"),
                                             freedom("c")]})
    assert [o.proxy_tag for o in config.outbounds] == ["b", "c", None]


def test_a_blackhole_ends_a_chain_so_it_makes_no_cycle(v2ray_bin: str, tmp_path: Path) -> None:
    """A blackhole dials nothing: its proxySettings carry nothing, and loop nowhere."""
    document = {"outbounds": [{"tag": "a", "protocol": "blackhole", "proxySettings": {"tag": "a"}}]}
    assert config_from_dict(document).outbounds[0].proxy_tag == "a"
    assert v2ray_test(v2ray_bin, tmp_path, document).returncode == 0
