"""dokodemo-door settings: 4.34's keys and defaults; bad values refused by JSON path."""
from __future__ import annotations

import pytest

from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.common.net import Address, Network
from v2sync.infra.conf.builder import config_from_dict
from v2sync.proxy.dokodemo.config import DokodemoConfig


def build(settings):
    config = {"inbounds": [{"protocol": "dokodemo-door", "port": 1, "settings": settings}],
              "outbounds": [{"protocol": "freedom"}]}
    return config_from_dict(config, "t.json").inbounds[0].proxy_settings


def test_defaults_are_4_34s() -> None:
    settings = build({})
    assert settings == DokodemoConfig(address=None, port=0, networks=(Network.TCP,),
                                      follow_redirect=False, user_level=0, timeout=None)


def test_every_key() -> None:
    settings = build({"address": "8.8.8.8", "port": 53, "network": "tcp,udp", "timeout": 30,
                      "followRedirect": True, "userLevel": 2})
    assert settings.address == Address.parse("8.8.8.8")
    assert settings.port == 53
    assert settings.networks == (Network.TCP, Network.UDP)
    assert settings.follow_redirect and settings.user_level == 2 and settings.timeout == 30


@pytest.mark.parametrize("network, expected", [
    (["udp"], (Network.UDP,)), ("UDP", (Network.UDP,)), (["tcp", "udp", "tcp"], (Network.TCP, Network.UDP)),
    # as 4.34: spaces are kept, and a name other than tcp or udp opens nothing
    ("tcp, udp", (Network.TCP,)), (["unix", "udp"], (Network.UDP,)),
])
def test_network_lists(network, expected) -> None:
    assert build({"network": network}).networks == expected


@pytest.mark.parametrize("settings, path, words", [
    ({"network": " udp"}, "inbounds[0].settings.network", "no network to serve"),
    ({"network": []}, "inbounds[0].settings.network", "no network specified"),
    ({"network": 5}, "inbounds[0].settings.network", "expected"),
    ({"port": 70000}, "inbounds[0].settings.port", "out of range"),
    ({"followRedirect": "yes"}, "inbounds[0].settings.followRedirect", ""),
])
def test_bad_settings_name_their_path(settings, path, words) -> None:
    with pytest.raises(ConfigErrors) as info:
        build(settings)
    text = str(info.value)
    assert path in text and words in text


def test_converter_called_directly_checks_types() -> None:
    with pytest.raises(ConfigError) as info:
        DokodemoConfig.from_json({"network": ["tcp", 1]}, "s")
    assert info.value.path == "s.network"
    with pytest.raises(ConfigError):
        DokodemoConfig.from_json({"network": "quic"}, "s")
