"""Per-file validation: key canonicalization, error format, unsupported features, warnings."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List

import jsonschema
import pytest

from v2sync.common.errors import ConfigErrors
from v2sync.infra.conf.builder import PROTOCOL_SETTINGS, load_config
from v2sync.infra.conf.schema import load_schema, path_sort_key, render_path
from v2sync.infra.conf.validate import (SUPPORTED_INBOUNDS, SUPPORTED_OUTBOUNDS,
                                        validate_document)

FREEDOM = {"protocol": "freedom"}


def errors_of(data: Dict[str, Any], file: str = "f.json") -> List[str]:
    with pytest.raises(ConfigErrors) as info:
        validate_document(data, file)
    return [e.render() for e in info.value.errors]


def test_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(load_schema())


def test_every_supported_protocol_has_a_settings_converter() -> None:
    assert SUPPORTED_INBOUNDS <= set(PROTOCOL_SETTINGS["inbound"])
    assert SUPPORTED_OUTBOUNDS <= set(PROTOCOL_SETTINGS["outbound"])


# --------------------------------------------------------------------------- canonical keys


def test_keys_match_case_insensitively() -> None:
    data = {"INBOUNDS": [{"Protocol": "SOCKS", "PORT": 1080,
                          "Settings": {"UDP": True, "Auth": "noauth"},
                          "streamSettings": {"Network": "TCP"}}],
            "Outbounds": [{"protocol": "Freedom", "SETTINGS": {"domainstrategy": "UseIP"}}]}
    document = validate_document(data, "f.json")
    inbound = document.data["inbounds"][0]
    assert inbound == {"protocol": "socks", "port": 1080,
                       "settings": {"udp": True, "auth": "noauth"},
                       "streamSettings": {"network": "tcp"}}
    assert document.data["outbounds"][0]["settings"] == {"domainStrategy": "UseIP"}
    assert document.warnings == ()


def test_exact_key_wins_over_case_folded_match() -> None:
    # wsSettings has both "path" and the legacy misspelling "Path" (transport_internet.go)
    data = {"inbounds": [{"protocol": "http", "port": 1,
                          "streamSettings": {"wsSettings": {"Path": "/old", "path": "/new"}}}],
            "outbounds": [FREEDOM]}
    ws = validate_document(data, "f.json").data["inbounds"][0]["streamSettings"]["wsSettings"]
    assert ws == {"Path": "/old", "path": "/new"}


def test_map_keys_are_not_canonicalized() -> None:
    data = {"policy": {"levels": {"0": {"ConnIdle": 5}}},
            "transport": {"tcpSettings": {"header": {"type": "none", "request": {
                "headers": {"X-Custom": "a,b"}}}}}}
    document = validate_document(data, "f.json")
    assert document.data["policy"]["levels"] == {"0": {"connIdle": 5}}
    headers = document.data["transport"]["tcpSettings"]["header"]["request"]["headers"]
    assert headers == {"X-Custom": ["a", "b"]}


def test_null_values_leave_fields_unset() -> None:
    document = validate_document({"log": None, "outbounds": [{"protocol": "freedom",
                                                               "settings": None}]}, "f.json")
    assert "log" not in document.data
    assert document.data["outbounds"][0] == {"protocol": "freedom"}


def test_duplicate_keys_after_folding_warn_and_last_wins() -> None:
    document = validate_document({"outbounds": [{"protocol": "freedom", "tag": "a", "Tag": "b"}]},
                                 "f.json")
    assert document.data["outbounds"][0]["tag"] == "b"
    assert any("repeats 'tag'" in w.message for w in document.warnings)


@pytest.mark.parametrize("value, expected", [
    ("http,tls", ["http", "tls"]),
    (["HTTP", "tls"], ["http", "tls"]),
    ("http", ["http"]),
])
def test_string_or_list_fields(value: Any, expected: List[str]) -> None:
    data = {"inbounds": [{"protocol": "socks", "port": 1,
                          "sniffing": {"enabled": True, "destOverride": value}}]}
    sniffing = validate_document(data, "f.json").data["inbounds"][0]["sniffing"]
    assert sniffing["destOverride"] == expected


def test_string_list_without_trimming_is_an_error() -> None:
    data = {"inbounds": [{"protocol": "socks", "port": 1,
                          "sniffing": {"destOverride": "http, tls"}}]}
    assert errors_of(data) == [
        "f.json: inbounds[0].sniffing.destOverride[1]: unknown sniffing protocol ' tls' "
        "(expected one of: http, tls, https, ssl)"]


# --------------------------------------------------------------------------- errors


def test_error_format_names_file_path_and_expectation() -> None:
    assert errors_of({"inbounds": [{"protocol": "socks", "port": 1, "settings": {"udp": "yes"}}]},
                     "conf/x.json") == [
        "conf/x.json: inbounds[0].settings.udp: 'yes' is a string (expected a boolean)"]


def test_all_errors_reported_sorted_by_path() -> None:
    data = {
        "outbounds": [{"protocol": "freedom", "settings": {"userLevel": -1}}],
        "inbounds": [
            {"protocol": "socks", "port": "x"},
            {"protocol": "http", "port": 1, "settings": {"timeout": "5"}},
            {"protocol": "http", "port": 1},
            {"protocol": "http", "port": 1}, {"protocol": "http", "port": 1},
            {"protocol": "http", "port": 1}, {"protocol": "http", "port": 1},
            {"protocol": "http", "port": 1}, {"protocol": "http", "port": 1},
            {"protocol": "http", "port": 1},
            {"protocol": "http", "port": 1, "tag": 7},
        ],
        "log": {"access": 1},
    }
    assert errors_of(data) == [
        "f.json: inbounds[0].port: invalid port 'x' "
        "(expected an integer 0-65535, a range \"a-b\" or \"env:VAR\")",
        "f.json: inbounds[1].settings.timeout: '5' is a string (expected an integer 0-4294967295)",
        "f.json: inbounds[10].tag: 7 is an integer (expected a string)",
        "f.json: log.access: 1 is an integer (expected a string)",
        "f.json: outbounds[0].settings.userLevel: -1 is out of range "
        "(expected an integer 0-4294967295)",
    ]


def test_errors_from_every_file_are_collected(tmp_path: Path) -> None:
    first = tmp_path / "one.json"
    second = tmp_path / "two.json"
    first.write_text(json.dumps({"inbounds": [{"protocol": "socks", "port": True}]}))
    second.write_text(json.dumps({"outbounds": [{"protocol": "nope"}]}))
    with pytest.raises(ConfigErrors) as info:
        load_config([str(first), str(second)])
    assert [(e.file, e.path) for e in info.value.errors] == [
        (str(first), "inbounds[0].port"), (str(second), "outbounds[0].protocol")]


def test_missing_protocol() -> None:
    assert errors_of({"outbounds": [{"tag": "x"}]}) == [
        "f.json: outbounds[0].protocol: missing required key "
        f"(expected one of: {_names(SUPPORTED_OUTBOUNDS)})"]


def test_missing_blackhole_response_type_names_choices() -> None:
    assert errors_of({"outbounds": [{"protocol": "blackhole", "settings": {"response": {}}}]}) == [
        "f.json: outbounds[0].settings.response.type: missing required key "
        "(expected one of: none, http)"]


def test_float_is_not_an_integer() -> None:
    assert errors_of({"policy": {"levels": {"0": {"handshake": 1.0}}}}) == [
        "f.json: policy.levels.0.handshake: 1.0 is a number (expected an integer 0-4294967295)"]


def test_bad_level_key() -> None:
    assert errors_of({"policy": {"levels": {"one": {}}}}) == [
        "f.json: policy.levels: invalid user level 'one' (expected a level number 0-4294967295)"]


# --------------------------------------------------------------------------- unsupported


def test_a_v5_config_is_named_first() -> None:
    # v2fly's v5 examples: a log section of objects, a "router", "services"
    v5 = {"log": {"error": {"level": "Debug", "type": "Console"}}, "router": {"rule": []},
          "services": {}, "outbounds": [{"protocol": "freedom"}]}
    errors = errors_of(v5)
    assert errors[0] == ("f.json: this looks like a v2ray v5 config (router, services, log.error "
                         'is an object); v2sync reads the v4 format (v5\'s "jsonv4") '
                         "(expected a v2ray 4.x config)")
    assert "log.error: {...} is an object" in errors[1]


def test_v5_keys_alone_do_not_refuse_a_file() -> None:
    # 4.34 ignores keys it does not know: they stay warnings
    document = validate_document({"router": {}, "services": {}, "outbounds": [{"protocol": "freedom"}]},
                                 "f.json")
    assert [w.path for w in document.warnings] == ["router", "services"]


def test_a_misplaced_top_level_key_is_pointed_home() -> None:
    # v2fly's domain-socket example puts dsSettings at the top, where 4.34 ignores it
    document = validate_document({"dsSettings": {"path": "/x"}, "SockOpt": {}, "foo": 1}, "f.json")
    assert [w.render() for w in document.warnings] == [
        "f.json: dsSettings: key 'dsSettings' ignored here (it belongs in \"transport\" or "
        "a handler's streamSettings)",
        "f.json: SockOpt: key 'SockOpt' ignored here (it belongs in a handler's streamSettings)",
        "f.json: foo: unknown key 'foo' ignored"]


def test_unsupported_network_names_supported_ones() -> None:
    data = {"inbounds": [{"protocol": "socks", "port": 1, "streamSettings": {"network": "KCP"}}]}
    assert errors_of(data) == [
        "f.json: inbounds[0].streamSettings.network: 'kcp' is not supported by v2sync "
        "(supported: domainsocket, tcp, websocket)"]


@pytest.mark.parametrize("network", ["quic", "h2", "http", "mkcp"])
def test_other_v2ray_networks_are_refused_by_name(network: str) -> None:
    data = {"outbounds": [{"protocol": "freedom", "streamSettings": {"network": network}}]}
    [error] = errors_of(data)
    assert "is not supported by v2sync (supported: domainsocket, tcp, websocket)" in error


def test_unknown_network_is_not_a_v2ray_name() -> None:
    data = {"outbounds": [{"protocol": "freedom", "streamSettings": {"network": "carrier-pigeon"}}]}
    assert errors_of(data) == [
        "f.json: outbounds[0].streamSettings.network: unknown network 'carrier-pigeon' "
        "(expected one of: domainsocket, tcp, websocket)"]


def _names(supported) -> str:
    """Protocols land one by one: the message lists whatever validate.py supports today."""
    return ", ".join(sorted(supported))


@pytest.mark.parametrize("kind, protocol, supported", [
    ("inbounds", "mtproto", _names(SUPPORTED_INBOUNDS)),
    ("outbounds", "mtproto", _names(SUPPORTED_OUTBOUNDS)),
])
def test_unsupported_protocols(kind: str, protocol: str, supported: str) -> None:
    assert errors_of({kind: [{"protocol": protocol, "port": 1}]} if kind == "inbounds"
                     else {kind: [{"protocol": protocol}]}) == [
        f"f.json: {kind}[0].protocol: '{protocol}' is not supported by v2sync "
        f"(supported: {supported})"]


def test_unknown_protocol() -> None:
    assert errors_of({"inbounds": [{"protocol": "socks5", "port": 1}]}) == [
        "f.json: inbounds[0].protocol: unknown protocol 'socks5' "
        f"(expected one of: {_names(SUPPORTED_INBOUNDS)})"]


def test_tls_and_http_header_are_accepted() -> None:
    stream = {"security": "TLS", "tcpSettings": {"header": {"type": "http"}}}
    document = validate_document({"outbounds": [{"protocol": "freedom", "streamSettings": stream}]},
                                 "f.json")
    assert document.data["outbounds"][0]["streamSettings"]["security"] == "tls"


def test_unknown_security_and_kcp_only_headers_are_errors() -> None:
    stream = {"security": "xtls", "tcpSettings": {"header": {"type": "srtp"}}}
    errors = errors_of({"outbounds": [{"protocol": "freedom", "streamSettings": stream}]})
    assert len(errors) == 2
    assert errors[0].startswith("f.json: outbounds[0].streamSettings.security: ")
    assert errors[1].startswith("f.json: outbounds[0].streamSettings.tcpSettings.header.type: ")


@pytest.mark.parametrize("data, message", [
    ({"reverse": {"bridges": [{"tag": "b", "domain": "test.v2sync"}]}},
     "f.json: reverse.bridges: reverse proxy bridges are not supported by v2sync yet"),
])
def test_unsupported_features_are_errors(data: Dict[str, Any], message: str) -> None:
    assert errors_of(data) == [message]


def test_empty_routing_and_dns_are_accepted() -> None:
    document = validate_document({"routing": {"domainStrategy": "AsIs", "rules": []},
                                  "dns": {"servers": []}, "stats": {}}, "f.json")
    assert document.data["routing"] == {"domainStrategy": "AsIs", "rules": []}


# --------------------------------------------------------------------------- warnings


def test_unknown_key_is_a_warning_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    data = {"inbounds": [{"protocol": "http", "port": 1, "colour": "blue",
                          "settings": {"timeout": 5, "extra": 1}}],
            "outbounds": [FREEDOM], "comment": "top-level note"}
    with caplog.at_level(logging.WARNING, logger="v2sync.infra.conf.validate"):
        document = validate_document(data, "w.json")
    rendered = [w.render() for w in document.warnings]
    assert rendered == [
        "w.json: inbounds[0].colour: unknown key 'colour' ignored",
        "w.json: inbounds[0].settings.extra: unknown key 'extra' ignored",
        "w.json: comment: unknown key 'comment' ignored",
    ]
    assert document.data["inbounds"][0] == {"protocol": "http", "port": 1,
                                            "settings": {"timeout": 5}}
    assert [r.getMessage() for r in caplog.records] == rendered


def test_unknown_fallback_values_warn() -> None:
    document = validate_document({"log": {"loglevel": "Verbose"},
                                  "inbounds": [{"protocol": "socks", "port": 1,
                                                "settings": {"auth": "Password"}}]}, "f.json")
    assert [w.render() for w in document.warnings] == [
        "f.json: log.loglevel: unknown value 'verbose', using 'warning' "
        "(known: debug, info, warning, error, none)",
        "f.json: inbounds[0].settings.auth: unknown value 'Password', using 'noauth' "
        "(known: noauth, password)"]


# --------------------------------------------------------------------------- paths


def test_render_path() -> None:
    assert render_path(["inbounds", 0, "settings", "accounts", 2, "user"]) == \
        "inbounds[0].settings.accounts[2].user"
    assert render_path(["policy", "levels", "0"]) == "policy.levels.0"
    assert render_path(["dns", "hosts", "a.b"]) == 'dns.hosts["a.b"]'


def test_path_sort_key_orders_indexes_numerically() -> None:
    paths = ["x[10].a", "x[2].b", "x", "x[2]", 'y["a.b"]']
    assert sorted(paths, key=path_sort_key) == ["x", "x[2]", "x[2].b", "x[10].a", 'y["a.b"]']


def test_null_http_header_value_is_an_error_as_in_4_34() -> None:
    header = {"type": "http", "request": {"headers": {"Host": None}}}
    data = {"outbounds": [{"protocol": "freedom",
                           "streamSettings": {"tcpSettings": {"header": header}}}]}
    assert errors_of(data) == [
        "f.json: outbounds[0].streamSettings.tcpSettings.header.request.headers.Host: "
        "empty HTTP header value: Host (expected a string or a list of strings)"]
