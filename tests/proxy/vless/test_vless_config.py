"""VLESS and Trojan settings: each case is given to the real ``v2ray -test`` as well, and
v2sync must accept what it accepts and refuse what it refuses, with its message."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from v2sync.common.errors import ConfigError
from v2sync.infra.conf.builder import config_from_dict

UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"
V2RAY_TEST_TIMEOUT = 20


def _inbound(settings: Dict[str, Any], protocol: str = "vless") -> Dict[str, Any]:
    return {"inbounds": [{"protocol": protocol, "port": 10443, "listen": "127.0.0.1",
                          "settings": settings}], "outbounds": [{"protocol": "freedom"}]}


def _outbound(settings: Dict[str, Any], protocol: str = "vless") -> Dict[str, Any]:
    return {"outbounds": [{"protocol": protocol, "settings": settings}]}


def _vnext(**user: Any) -> Dict[str, Any]:
    return {"vnext": [{"address": "127.0.0.1", "port": 443, "users": [{"id": UUID, **user}]}]}


CASES = [
    (_inbound({"decryption": "none", "clients": [{"id": UUID, "flow": "xtls-rprx-direct"}]}), None),
    (_inbound({"decryption": "none", "clients": [{"id": UUID, "flow": "anything", "level": 3,
                                                  "email": "a@b"}]}), None),
    (_inbound({"clients": [{"id": UUID}]}),
     'VLESS settings: please add/set "decryption":"none" to every settings'),
    (_inbound({"decryption": "aes", "clients": []}),
     'VLESS settings: please add/set "decryption":"none" to every settings'),
    (_inbound({"decryption": "none", "clients": [{"id": UUID, "encryption": "none"}]}),
     'VLESS clients: "encryption" should not in inbound settings'),
    (_outbound(_vnext(encryption="none", flow="xtls-rprx-splice")), None),
    (_outbound(_vnext()), 'VLESS users: please add/set "encryption":"none" for every user'),
    # A space inside a group: Go's hex.Decode refuses it (Python's bytes.fromhex skips it).
    (_inbound({"decryption": "none", "clients": [{"id": "b8 31 38" + UUID[8:]}]}),
     "failed to parse ID"),
    (_outbound(_vnext(encryption="auto")),
     'VLESS users: please add/set "encryption":"none" for every user'),
    (_outbound({"vnext": []}), 'VLESS settings: "vnext" is empty'),
    (_outbound({"vnext": [{"address": "127.0.0.1", "port": 443, "users": []}]}),
     'VLESS vnext: "users" is empty'),
    (_inbound({"clients": [{"password": ""}]}, "trojan"), None),
    (_outbound({"servers": []}, "trojan"), "0 Trojan server configured."),
    (_outbound({"servers": [{"address": "127.0.0.1", "port": 0, "password": "p"}]}, "trojan"),
     "Invalid Trojan port."),
    (_outbound({"servers": [{"address": "127.0.0.1", "port": 443}]}, "trojan"),
     "Trojan password is not specified."),
]


@pytest.mark.parametrize("config, message", CASES, ids=range(len(CASES)))
def test_as_v2ray_test_decides(v2ray_bin: str, tmp_path: Path, config: Dict[str, Any],
                               message: Optional[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([v2ray_bin, "-test", "-config", str(path)], capture_output=True,
                            text=True, timeout=V2RAY_TEST_TIMEOUT, cwd=tmp_path)
    output = result.stdout + result.stderr
    if message is None:
        assert result.returncode == 0, output
        config_from_dict(config, "f.json")
        return
    assert result.returncode != 0 and message in output, output
    with pytest.raises(ConfigError) as info:
        config_from_dict(config, "f.json")
    assert message in str(info.value)


def _servers(protocol: str, address: Any) -> Dict[str, Any]:
    """One server entry of ``protocol`` whose address is ``address`` (absent if ``...``)."""
    at = {} if address is ... else {"address": address}
    if protocol in ("vless", "vmess"):
        user = {"id": UUID, "encryption": "none"} if protocol == "vless" else {"id": UUID}
        return {"vnext": [{**at, "port": 443, "users": [user]}]}
    extra = {"method": "aes-128-gcm"} if protocol == "shadowsocks" else {}
    return {"servers": [{**at, "port": 443, "password": "p", **extra}]}


SERVER_PROTOCOLS = ["vless", "vmess", "trojan", "shadowsocks", "socks", "http"]


@pytest.mark.parametrize("address", ["", "  "])
@pytest.mark.parametrize("protocol", SERVER_PROTOCOLS)
def test_an_empty_server_address_is_named_as_empty(protocol: str, address: str) -> None:
    # v2fly's example configs ship "" as a placeholder; 4.34 takes it (ParseAddress trims
    # the spaces) and dials this machine. v2sync refuses it at once, in the same words for
    # every protocol.
    with pytest.raises(ConfigError) as info:
        config_from_dict(_outbound(_servers(protocol, address), protocol), "f.json")
    assert "the server address is empty (4.34 would dial this machine)" in str(info.value)
    assert "outbounds[0].settings." in str(info.value) and "(expected a host name or IP)" in str(info.value)


@pytest.mark.parametrize("protocol, words", [
    ("vless", 'VLESS vnext: "address" is not set'), ("vmess", "vmess server address is empty"),
    ("trojan", "Trojan server address is not set."),
    ("shadowsocks", "Shadowsocks server address is not set."),
])
@pytest.mark.parametrize("address", [..., None])
def test_a_missing_server_address_gets_4_34s_words(protocol: str, words: str, address: Any) -> None:
    # A JSON null leaves Go's pointer nil, as no key does.
    with pytest.raises(ConfigError) as info:
        config_from_dict(_outbound(_servers(protocol, address), protocol), "f.json")
    assert words in str(info.value)


@pytest.mark.parametrize("protocol, user_words", [
    ("vmess", "users[0].id"), ("vless", "users[0].id"),
    ("trojan", "Trojan password is not specified."),
    ("shadowsocks", "Shadowsocks password is not specified."),
])
def test_every_error_of_every_server_entry_in_one_report(protocol: str, user_words: str) -> None:
    # v2fly's example clients ship "address": "" and "id": "" together: both are named at
    # once, and so is the next entry's.
    first = _servers(protocol, "")
    entries = first["vnext" if "vnext" in first else "servers"]
    if "users" in entries[0]:
        entries[0]["users"][0]["id"] = ""
    else:
        entries[0]["password"] = ""
    entries.append({**entries[0], "address": " "})
    with pytest.raises(ConfigError) as info:
        config_from_dict(_outbound(first, protocol), "f.json")
    text = str(info.value)
    assert "[0].address: the server address is empty" in text, text
    assert user_words in text, text
    assert "[1].address: the server address is empty" in text, text
