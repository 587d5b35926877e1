"""Outbound ``mux`` (infra/conf/v2ray.go MuxConfig.Build, handler.go's check) and the
``servers`` of the HTTP and SOCKS outbounds (infra/conf http.go, socks.go)."""
import json
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

from v2sync.common.errors import ConfigErrors
from v2sync.common.net import Address
from v2sync.common.protocol.server_spec import Account, ServerSpec
from v2sync.infra.conf.builder import config_from_dict
from v2sync.infra.conf.model import MuxConfig


def _outbound(**extra: Any) -> Dict[str, Any]:
    return {"outbounds": [{"protocol": "freedom", **extra}]}


@pytest.mark.parametrize("mux, built", [
    (None, None),
    ({"enabled": True}, MuxConfig(True, 8)),
    ({"enabled": True, "concurrency": 0}, MuxConfig(True, 8)),
    ({"enabled": True, "concurrency": 1024}, MuxConfig(True, 1024)),
    ({"enabled": True, "concurrency": -1}, None),
    ({"enabled": False, "concurrency": 3}, MuxConfig(False, 3)),
])
def test_mux_is_built_as_4_34(mux, built) -> None:
    config = config_from_dict(_outbound(mux=mux) if mux is not None else _outbound())
    assert config.outbounds[0].mux == built


def _errors(data: Dict[str, Any]) -> List[str]:
    with pytest.raises(ConfigErrors) as info:
        config_from_dict(data, "f.json")
    return [e.render() for e in info.value.errors]


def test_mux_concurrency_over_1024_is_refused_with_its_path() -> None:
    assert _errors(_outbound(mux={"enabled": True, "concurrency": 1025})) == [
        "f.json: outbounds[0].mux.concurrency: invalid mux concurrency: 1025 "
        "(1..1024, 0 for the default 8, negative for no mux)"]


def test_mux_fields_are_type_checked() -> None:
    errors = _errors(_outbound(mux={"enabled": "yes", "concurrency": 40000}))
    assert [e.split(":")[1].strip() for e in errors] == ["outbounds[0].mux.concurrency",
                                                          "outbounds[0].mux.enabled"]


@pytest.mark.parametrize("protocol", ["http", "socks"])
def test_servers_and_users(protocol: str) -> None:
    settings = {"servers": [{"address": "proxy.example", "port": 3128,
                             "users": [{"user": "a", "pass": "b", "level": 1,
                                        "email": "a@x"}]},
                            {"address": "10.0.0.1", "port": 1080}]}
    config = config_from_dict({"outbounds": [{"protocol": protocol, "settings": settings}]})
    assert config.outbounds[0].proxy_settings.servers == (
        ServerSpec(Address.parse("proxy.example"), 3128, (Account("a", "b", 1, "a@x"),)),
        ServerSpec(Address.parse("10.0.0.1"), 1080, ()))


@pytest.mark.parametrize("settings, path", [
    ({}, "outbounds[0].settings.servers"),
    ({"servers": [{"port": 1}]}, "outbounds[0].settings.servers[0].address"),
    ({"servers": [{"address": "h", "port": "x"}]}, "outbounds[0].settings.servers[0].port"),
    ({"servers": [{"address": "h", "port": 1, "users": [{"user": 5}]}]},
     "outbounds[0].settings.servers[0].users[0].user"),
])
@pytest.mark.parametrize("protocol", ["http", "socks"])
def test_bad_servers_name_their_path(protocol: str, settings, path: str) -> None:
    errors = _errors({"outbounds": [{"protocol": protocol, "settings": settings}]})
    assert [e.split(": ")[1] for e in errors] == [path]


@pytest.mark.parametrize("server", [{"address": "h", "port": 1, "users": [{"user": "u", "level": 70000}]},
                                    {"address": "h", "port": 0}, {"address": "h"}],
                         ids=["uint32-level", "port-0", "no-port"])
@pytest.mark.parametrize("protocol", ["http", "socks"])
def test_servers_4_34_takes_are_taken(protocol: str, server: Dict[str, Any], v2ray_bin: str,
                                      tmp_path: Path) -> None:
    """A user's level is protocol.User's uint32 here, and port 0 is taken (each dial then
    fails), as ``v2ray -test`` says."""
    config = {"outbounds": [{"protocol": protocol, "settings": {"servers": [server]}}]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([v2ray_bin, "-test", "-config", str(path)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout
    config_from_dict(config)
