"""Reading one config: size bound, encodings, Go's nesting limit, no recursion anywhere."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.infra.conf.builder import config_from_dict, load_config
from v2sync.infra.conf.jsonreader import MAX_CONFIG_BYTES, MAX_DEPTH, loads, read_bounded
from v2sync.infra.conf.loader import read_json, read_text
from v2sync.infra.conf.model import deep_freeze
from v2sync.infra.conf.validate import SCHEMA_DEPTH, cut_below

FREEDOM = {"protocol": "freedom"}


def nested_text(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def unwrap(value: Any, depth: int) -> Any:
    for _ in range(depth):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    return value


# --------------------------------------------------------------------------- nesting


@pytest.mark.parametrize("depth", [999, 1_000, 5_000, MAX_DEPTH])
def test_nesting_up_to_gos_limit_parses(depth: int) -> None:
    # json.loads stops near 1,000 levels (RecursionError); v2ray accepts 10,000
    assert unwrap(loads(nested_text(depth), "d.json"), depth) == 1


def test_nesting_past_gos_limit_is_an_error_at_its_column() -> None:
    text = '{"x": ' + nested_text(MAX_DEPTH) + "}"  # the object is one more level
    with pytest.raises(ConfigError) as info:
        loads(text, "d.json")
    # v2ray -test: "failed to read config file at line 1 char 10006 > ... exceeded max depth"
    assert info.value.message == ("invalid JSON at line 1 column 10006: nesting deeper than "
                                  "10000 levels (V2Ray's limit)")


def test_syntax_errors_in_deep_documents_have_line_and_column() -> None:
    text = "[" * 2_000 + "\n1 2" + "]" * 2_000
    with pytest.raises(ConfigError, match="line 2 column 3: Expecting ',' delimiter"):
        loads(text, "d.json")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=10)


@given(JSON_VALUES)
def test_property_deep_documents_parse_as_json_loads_would(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert unwrap(loads(nested_text(1_500, text), "p.json"), 1_500) == json.loads(text)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', "[" * 2_000 + "NaN"])
def test_nan_and_infinity_are_refused_as_go_refuses_them(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid JSON"):
        loads(text, "n.json")


def test_an_integer_too_long_for_python_is_an_error() -> None:
    with pytest.raises(ConfigError, match="invalid JSON"):
        loads('{"port": ' + "9" * 5_000 + "}", "n.json")


def test_a_deep_value_in_a_handler_reports_its_type_error() -> None:
    # jsonschema reprs a refused value; repr of a 9,000-deep list raised RecursionError
    deep = loads(nested_text(9_000), "d.json")
    with pytest.raises(ConfigErrors) as info:
        config_from_dict({"inbounds": [{"protocol": "socks", "port": 1, "tag": deep}],
                          "outbounds": [FREEDOM]}, "d.json")
    assert [e.render() for e in info.value.errors] == [
        "d.json: inbounds[0].tag: [...] is an array (expected a string)"]


def test_deep_freeze_needs_no_recursion() -> None:
    depth = MAX_DEPTH - 3  # the leaf adds three levels
    frozen = deep_freeze(loads(nested_text(depth, '{"a": [1, {"b": 2}]}'), "d.json"))
    inner = frozen
    for _ in range(depth):
        assert isinstance(inner, tuple)
        inner = inner[0]
    assert inner == {"a": (1, {"b": 2})}
    with pytest.raises(TypeError):
        inner["a"] = 1  # type: ignore[index]


def test_schema_describes_less_than_the_validation_cut() -> None:
    # cut_below keeps what the schema looks at: schema.json must stay shallower than that
    schema_depth, pending = 0, [(json.loads(
        (Path(__file__).resolve().parents[3] / "v2sync/infra/conf/schema.json").read_text()), 0)]
    while pending:
        node, level = pending.pop()
        schema_depth = max(schema_depth, level)
        if isinstance(node, dict):
            pending.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            pending.extend((v, level) for v in node)
    assert schema_depth < SCHEMA_DEPTH
    assert cut_below({"a": [[[1]]], "b": 2}, 2) == {"a": [[]], "b": 2}


# --------------------------------------------------------------------------- size


def test_dev_zero_is_refused_at_the_size_limit() -> None:
    with pytest.raises(ConfigError) as info:
        read_text("/dev/zero")
    assert info.value.render() == \
        "/dev/zero: config is larger than 64 MiB (expected at most 64 MiB)"


def test_read_bounded_takes_exactly_the_limit() -> None:
    assert read_bounded(io.BytesIO(b"x" * 10), "f", limit=10) == b"x" * 10
    with pytest.raises(ConfigError, match="larger than 11 bytes"):
        read_bounded(io.BytesIO(b"x" * 12), "f", limit=11)
    assert MAX_CONFIG_BYTES == 64 * 1024 * 1024


def test_stdin_is_bounded_too() -> None:
    class Endless(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            buffer[:] = b" " * len(buffer)
            return len(buffer)

    stdin = io.TextIOWrapper(io.BufferedReader(Endless()))
    with pytest.raises(ConfigError, match="larger than 64 MiB"):
        read_text("-", stdin)


# --------------------------------------------------------------------------- encodings


def test_latin1_bytes_read_as_replacement_with_a_warning(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    # v2ray -test accepts this file (Go's decoder reads bad UTF-8 as U+FFFD)
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"outbounds": [{"protocol": "freedom", "tag": "caf\xe9"}]}')
    with caplog.at_level(logging.WARNING):
        config = load_config([str(path)])
    assert config.outbounds[0].tag == "caf\ufffd"
    assert "not UTF-8 at byte 50" in caplog.text


def test_stdin_bytes_that_are_not_utf8_are_read_the_same_way() -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b'{"tag": "\xff\xfe"}'), encoding="utf-8")
    assert read_json("-", stdin) == {"tag": "\ufffd\ufffd"}


def test_bom_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert read_json(str(path)) == {"a": 1}


def test_lone_surrogate_escapes_become_replacement_characters() -> None:
    # Go's decoder does this; a lone surrogate cannot be encoded to UTF-8 later
    deep = nested_text(1_200, r'"\ud800"')
    text = r'{"\ud800k": ["\udfff", "ok \ud83d\ude00"], "n": ' + deep + "}"
    value = loads(text, "s.json")
    assert value["\ufffdk"] == ["\ufffd", "ok \U0001f600"]
    assert unwrap(value["n"], 1_200) == "\ufffd"


def test_utf16_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "u16.json"
    path.write_bytes('{"a": 1}'.encode("utf-16"))
    with pytest.raises(ConfigErrors) as info:
        load_config([str(path)])
    assert info.value.errors[0].message.startswith("invalid JSON at line 1 column 1")
