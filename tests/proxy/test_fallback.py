"""Fallbacks shared by VLESS and Trojan: config checks (each compared with what
``v2ray -test`` says about the same config) and 4.34's selection by ALPN and path."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from v2sync.common.errors import ConfigError, RemoteProtocolError
from v2sync.infra.conf.builder import config_from_dict
from v2sync.proxy.fallback import (Fallback, FallbackTable, _dial_port, parse_fallbacks,
                                   request_path)

from support.deep import deep_json

UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"
V2RAY_TEST_TIMEOUT = 20


def _config(protocol: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    base: Dict[str, Any] = ({"decryption": "none", "clients": [{"id": UUID}]}
                            if protocol == "vless" else {"clients": [{"password": "pw"}]})
    base.update(settings)
    return {"inbounds": [{"protocol": protocol, "port": 10443, "listen": "127.0.0.1",
                          "settings": base}],
            "outbounds": [{"protocol": "freedom"}]}


BAD = [
    ({"fallbacks": [{"dest": 80, "path": "no-slash"}]},
     '{P} fallbacks: "path" must be empty or start with "/"'),
    ({"fallbacks": [{"dest": "nonsense"}]},
     '{P} fallbacks: please fill in a valid value for every "dest"'),
    ({"fallbacks": [{"dest": 70000}]},
     '{P} fallbacks: please fill in a valid value for every "dest"'),
    ({"fallbacks": [{"path": "/x"}]},
     '{P} fallbacks: please fill in a valid value for every "dest"'),
    ({"fallbacks": [{"dest": 80, "xver": 3}]},
     '{P} fallbacks: invalid PROXY protocol version, "xver" only accepts 0, 1, 2'),
    ({"fallback": {"dest": 80}},
     '{P} settings: please use "fallbacks":[{{}}] instead of "fallback":{{}}'),
    ({"fallback": None},  # 4.34 keeps it as raw JSON, which is not nil
     '{P} settings: please use "fallbacks":[{{}}] instead of "fallback":{{}}'),
    # Digits str.isdigit() passes and Go's strconv.Atoi does not, and an int64 overflow.
    *[({"fallbacks": [{"dest": dest}]},
       '{P} fallbacks: please fill in a valid value for every "dest"')
      for dest in ["\u00b2", "\uff18\uff10", "\u0668\u0660", "1" * 20]],
    # A bracket out of place, as Go's net.SplitHostPort refuses it.
    *[({"fallbacks": [{"dest": dest}]},
       '{P} fallbacks: please fill in a valid value for every "dest"')
      for dest in ["[[::1]:80", "example.com:8]", "a:[80", "[::1]x:80"]],
]


@pytest.mark.parametrize("protocol", ["vless", "trojan"])
@pytest.mark.parametrize("settings, message", BAD, ids=range(len(BAD)))
def test_refused_as_v2ray_refuses(v2ray_bin: str, tmp_path: Path, protocol: str,
                                  settings, message: str) -> None:
    expected = message.format(P="VLESS" if protocol == "vless" else "Trojan")
    config = _config(protocol, settings)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([v2ray_bin, "-test", "-config", str(path)], capture_output=True,
                            text=True, timeout=V2RAY_TEST_TIMEOUT, cwd=tmp_path)
    assert result.returncode != 0 and expected in result.stdout + result.stderr
    with pytest.raises(ConfigError) as info:
        config_from_dict(config, "f.json")
    assert expected in str(info.value)
    assert "inbounds[0].settings.fallback" in str(info.value)


GOOD: List[Dict[str, Any]] = [
    {"dest": 80}, {"dest": "8080"}, {"dest": "localhost:80"}, {"dest": "[::1]:443"},
    {"dest": "/run/site.sock"}, {"dest": "@site"}, {"dest": "@@site"},
    {"dest": "serve-ws-none"}, {"dest": 80, "alpn": "h2", "path": "/ws", "xver": 2},
    {"dest": 80, "name": "a.example"}, {"type": "tcp", "dest": "anything"},
    {"dest": None}, {"dest": "-1"}, {"dest": "+80"}, {"dest": "example.com:http"},
]


def test_accepted_as_v2ray_accepts(v2ray_bin: str, tmp_path: Path) -> None:
    for protocol in ("vless", "trojan"):
        config = _config(protocol, {"fallbacks": GOOD})
        path = tmp_path / f"{protocol}.json"
        path.write_text(json.dumps(config))
        result = subprocess.run([v2ray_bin, "-test", "-config", str(path)], capture_output=True,
                                text=True, timeout=V2RAY_TEST_TIMEOUT, cwd=tmp_path)
        assert result.returncode == 0, result.stdout
        config_from_dict(config, "f.json")


def test_dest_forms() -> None:
    parsed = parse_fallbacks({"fallbacks": GOOD}, "settings", "VLESS")
    assert [(f.type, f.dest) for f in parsed] == [
        ("tcp", "127.0.0.1:80"), ("tcp", "127.0.0.1:8080"), ("tcp", "localhost:80"),
        ("tcp", "[::1]:443"), ("unix", "/run/site.sock"), ("unix", "@site"),
        ("unix", "@@site"), ("serve", "serve-ws-none"), ("tcp", "127.0.0.1:80"),
        ("tcp", "127.0.0.1:80"), ("tcp", "anything"), ("tcp", "127.0.0.1:0"),
        ("tcp", "127.0.0.1:-1"), ("tcp", "127.0.0.1:+80"), ("tcp", "example.com:http")]


def _fb(dest: str, **kw: Any) -> Fallback:
    return Fallback(dest, "tcp", **kw)


GET = b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n"


def test_selection_by_alpn_then_path_with_defaults_copied() -> None:
    table = FallbackTable((_fb("site"), _fb("ws", path="/ws"), _fb("h2", alpn="h2"),
                           _fb("h2ws", alpn="h2", path="/h2ws")))
    assert table.select("", "", GET).dest == "ws"
    assert table.select("", "http/1.1", GET).dest == "ws"  # no such alpn: the "" map
    assert table.select("", "h2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").dest == "h2"
    assert table.select("", "h2", GET).dest == "ws"  # "" paths copied under h2
    assert table.select("", "", b"GET /other HTTP/1.1\r\n").dest == "site"
    assert table.select("", "", b"\x16\x03").dest == "site"


def test_missing_defaults_are_errors_as_in_4_34() -> None:
    only_h2 = FallbackTable((_fb("h2", alpn="h2"),))
    with pytest.raises(RemoteProtocolError, match='default "alpn"'):
        only_h2.select("", "http/1.1", GET)
    only_path = FallbackTable((_fb("ws", path="/ws"),))
    with pytest.raises(RemoteProtocolError, match='default "path"'):
        only_path.select("", "", b"GET / HTTP/1.1\r\n\r\n")


def test_server_name_selects_first() -> None:
    table = FallbackTable((_fb("site"), _fb("b", name="b.example"),
                           _fb("bws", name="b.example", path="/ws")))
    assert table.select("b.example", "", b"GET / HTTP/1.1\r\n\r\n").dest == "b"
    assert table.select("www.b.example", "", GET).dest == "bws"  # longest contained name
    assert table.select("c.example", "", GET).dest == "site"


@pytest.mark.parametrize("first, path", [
    (b"GET /a/b?c HTTP/1.1\r\n", "/a/b?c"), (b"OPTIONS /x HTTP/1.1\r\n", "/x"),
    (b"GET / HTTP/1.1\r\n", ""),  # shorter than 18 bytes counts as no request
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ""), (b"GET /" + b"x" * 80 + b" HTTP/1.1", ""),
    (b"GET /a\r\n HTTP/1.1 and more", ""),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ""),
    (b"POST /api HTTP/1.1\r\n", "/api"), (b"CONNECT /x HTTP/1.1\r\n", "/x"),
    (b"CONNECT1 /x HTTP/1.1\r\n", ""),
    # Bytes compared with the config's UTF-8, as inbound.go compares them (found by a review).
    (b"GET /\xc3\xbc HTTP/1.1\r\n", "/\u00fc"), (b"GET /\xfc HTTP/1.1\r\n\r\n", "/\udcfc"),
])
def test_request_path_as_inbound_go_reads_it(first: bytes, path: str) -> None:
    assert request_path(first) == path


@pytest.mark.parametrize("protocol", ["vless", "trojan"])
def test_duplicate_emails_refused_as_v2ray_refuses(v2ray_bin: str, tmp_path: Path,
                                                   protocol: str) -> None:
    """Not a fallback check, but the same comparison: the user table's rule at load time."""
    clients = ([{"id": UUID, "email": "x@y"}, {"id": UUID.replace("b8", "c9"), "email": "X@y"}]
               if protocol == "vless" else
               [{"password": "a", "email": "x@y"}, {"password": "b", "email": "X@y"}])
    config = _config(protocol, {"clients": clients})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([v2ray_bin, "-test", "-config", str(path)], capture_output=True,
                            text=True, timeout=V2RAY_TEST_TIMEOUT, cwd=tmp_path)
    assert result.returncode != 0 and "User X@y already exists." in result.stdout
    with pytest.raises(ConfigError) as info:
        config_from_dict(config, "f.json")
    assert "inbounds[0].settings.clients[1]" in str(info.value)
    assert "User X@y already exists." in str(info.value)


@pytest.mark.parametrize("entry, message", [
    ({"dest": 80, "xver": deep_json()}, "invalid xver [...]"),
    ({"dest": 80, "path": deep_json()}, "[...] is not a string"),
])
def test_deeply_nested_values_are_named_not_repr_d(entry: Dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_fallbacks({"fallbacks": [entry]}, "inbounds[0].settings", "VLESS")
    assert message in info.value.message


@pytest.mark.parametrize("text, port", [("80", 80), ("+80", 80), ("http", 80), ("0", 0),
                                        ("-1", None), ("65536", None), ("\u00b2", None),
                                        ("no-such-service", None), ("", None)])
def test_a_dest_port_is_read_as_go_s_dialer_reads_it(text: str, port: Optional[int]) -> None:
    assert _dial_port(text) == port


def test_a_fallback_type_is_a_network_v2sync_dials_or_refused_by_name() -> None:
    """4.34 hands "type" to Go's dialer; v2sync dials tcp, tcp4, tcp6 and unix, and refuses
    the rest when the config loads, not on each connection."""
    parsed = parse_fallbacks({"fallbacks": [{"type": "tcp4", "dest": "127.0.0.1:80"},
                                            {"path": "/6", "type": "tcp6", "dest": "[::1]:80"}]},
                             "settings", "VLESS")
    assert [(f.type, f.dest) for f in parsed] == [("tcp4", "127.0.0.1:80"), ("tcp6", "[::1]:80")]
    with pytest.raises(ConfigError, match="fallback type 'udp' is not supported by v2sync"):
        parse_fallbacks({"fallbacks": [{"type": "udp", "dest": "127.0.0.1:53"}]},
                        "settings", "VLESS")


def test_a_tcp4_fallback_is_dialled(tcp_echo) -> None:
    from v2sync.proxy.fallback import dial_fallback
    conn = dial_fallback(Fallback(f"127.0.0.1:{tcp_echo.port}", "tcp4"))
    try:
        conn.write(b"four")
        assert conn.recv(16) == b"four"
    finally:
        conn.close()
