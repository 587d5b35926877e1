"""Comment stripping, reading, merging (Config.Override), confdirs, ports, string lists."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.infra.conf.builder import load_config
from v2sync.infra.conf.loader import (Document, expand_confdirs, merge, parse_json,
                                      parse_port_range, read_json, string_list, strip_comments)
from v2sync.infra.conf.model import PortRange

# --------------------------------------------------------------------------- comments


@pytest.mark.parametrize("text, expected", [
    ('{"a": 1} // trailing', {"a": 1}),
    ('// first line\n{"a": 1}', {"a": 1}),
    ('{"a": /* inline */ 1}', {"a": 1}),
    ('{"a":\n/* multi\nline\n*/ 1}', {"a": 1}),
    ('# hash comment\n{"a": 1} # another', {"a": 1}),
    ('{"a": 1 /* ** stars ** */}', {"a": 1}),
])
def test_comment_forms_are_removed(text: str, expected: Dict[str, Any]) -> None:
    assert parse_json(text, "t.json") == expected


@pytest.mark.parametrize("value", [
    "http://example.com/path",
    "a // not a comment",
    "/* kept */",
    "# kept",
    'escaped \\" quote // still inside',
    "back\\\\slash",
])
def test_comment_markers_inside_strings_are_kept(value: str) -> None:
    text = '{"v": ' + json.dumps(value) + "} // real comment"
    assert parse_json(text, "t.json") == {"v": value}


def test_escaped_quote_does_not_end_string() -> None:
    # without escape handling the string would end at \" and "# x" would be a comment
    text = r'{"v": "say \"# x\" // y"}'
    assert parse_json(text, "t.json") == {"v": 'say "# x" // y'}


def test_stripping_preserves_positions() -> None:
    text = '{"a": 1, /* x\ny */ "b": 2} // z\n'
    stripped = strip_comments(text)
    assert len(stripped) == len(text)
    assert stripped.count("\n") == text.count("\n")
    assert "x" not in stripped and "z" not in stripped


MARKER_TEXT = st.text(alphabet=st.sampled_from(list('ab/*#"\\\'\n {}')), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | MARKER_TEXT,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(MARKER_TEXT, children, max_size=4)),
    max_leaves=12)


@given(JSON_VALUES, MARKER_TEXT.filter(lambda t: "\n" not in t))
def test_property_strings_survive_and_comments_vanish(value: Any, comment: str) -> None:
    text = "/* lead */ {\"v\": " + json.dumps(value) + "} // " + comment + "\n# " + comment
    assert parse_json(text, "p.json") == {"v": value}


@given(MARKER_TEXT)
def test_property_stripping_keeps_length_and_lines(text: str) -> None:
    stripped = strip_comments(text)
    assert len(stripped) == len(text)
    assert [i for i, c in enumerate(stripped) if c == "\n"] == \
        [i for i, c in enumerate(text) if c == "\n"]


def test_unclosed_block_comment_runs_to_end() -> None:
    assert strip_comments('{"a": 1} /* never closed\n "b"').strip() == '{"a": 1}'


def test_syntax_error_reports_original_line() -> None:
    text = '// comment\n/* block\n comment */\n{"a": 1,,}\n'
    with pytest.raises(ConfigError) as info:
        parse_json(text, "bad.json")
    assert info.value.file == "bad.json"
    assert "line 4" in info.value.message


def test_top_level_must_be_object() -> None:
    with pytest.raises(ConfigError, match="top level must be a JSON object"):
        parse_json("[1, 2]", "list.json")


# --------------------------------------------------------------------------- reading


def test_read_stdin_names() -> None:
    for name in ("-", "stdin:"):
        assert read_json(name, stdin=io.StringIO('{"x": 1} # c')) == {"x": 1}


def test_load_config_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {"outbounds": [{"protocol": "freedom", "tag": "from-stdin"}]}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(doc)))
    config = load_config(["stdin:"])
    assert [o.tag for o in config.outbounds] == ["from-stdin"]
    assert config.outbounds[0].file == "stdin:"


def test_missing_file_is_located_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ConfigErrors) as info:
        load_config([missing])
    assert info.value.errors[0].file == missing
    assert "cannot read config file" in info.value.errors[0].message


# --------------------------------------------------------------------------- merging


def doc(name: str, **data: Any) -> Document:
    return Document(name, data)


def ib(tag: str, port: int = 1) -> Dict[str, Any]:
    return {"protocol": "socks", "tag": tag, "port": port}


def ob(tag: str, protocol: str = "freedom") -> Dict[str, Any]:
    return {"protocol": protocol, "tag": tag}


def tags(items: List[Any]) -> List[str]:
    return [item.value["tag"] for item in items]


def test_first_file_taken_whole() -> None:
    merged = merge([doc("a.json", inbounds=[ib("x")], outbounds=[ob("o")], log={"loglevel": "info"},
                        port=1080)])
    assert tags(merged.inbounds) == ["x"]
    assert merged.section("log").value == {"loglevel": "info"}
    assert merged.section("port").value == 1080


def test_single_inbound_with_same_tag_replaces() -> None:
    merged = merge([doc("a.json", inbounds=[ib("x", 1), ib("y", 2)]),
                    doc("b.json", inbounds=[ib("x", 9)])])
    assert tags(merged.inbounds) == ["x", "y"]
    assert merged.inbounds[0].value["port"] == 9
    assert (merged.inbounds[0].file, merged.inbounds[0].path) == ("b.json", "inbounds[0]")
    assert (merged.inbounds[1].file, merged.inbounds[1].path) == ("a.json", "inbounds[1]")


def test_single_inbound_with_new_tag_appends() -> None:
    merged = merge([doc("a.json", inbounds=[ib("x"), ib("y")]), doc("b.json", inbounds=[ib("z")])])
    assert tags(merged.inbounds) == ["x", "y", "z"]


def test_single_inbound_into_empty_base_is_taken() -> None:
    merged = merge([doc("a.json", outbounds=[ob("o")]), doc("b.json", inbounds=[ib("z")])])
    assert tags(merged.inbounds) == ["z"]


def test_several_inbounds_replace_whole_list() -> None:
    merged = merge([doc("a.json", inbounds=[ib("x"), ib("y")]),
                    doc("b.json", inbounds=[ib("x", 5), ib("q")])])
    assert tags(merged.inbounds) == ["x", "q"]
    assert all(item.file == "b.json" for item in merged.inbounds)


def test_empty_inbound_list_changes_nothing() -> None:
    merged = merge([doc("a.json", inbounds=[ib("x")]), doc("b.json", inbounds=[])])
    assert tags(merged.inbounds) == ["x"]


def test_single_outbound_with_new_tag_is_prepended() -> None:
    merged = merge([doc("a.json", outbounds=[ob("o1"), ob("o2")]),
                    doc("extra.json", outbounds=[ob("new")])])
    assert tags(merged.outbounds) == ["new", "o1", "o2"]


def test_single_outbound_from_tail_file_is_appended() -> None:
    merged = merge([doc("a.json", outbounds=[ob("o1"), ob("o2")]),
                    doc("conf/90_TAIL_block.json", outbounds=[ob("new")])])
    assert tags(merged.outbounds) == ["o1", "o2", "new"]


def test_single_outbound_with_same_tag_replaces_in_place() -> None:
    merged = merge([doc("a.json", outbounds=[ob("o1"), ob("o2")]),
                    doc("b.json", outbounds=[ob("o2", "blackhole")])])
    assert tags(merged.outbounds) == ["o1", "o2"]
    assert merged.outbounds[1].value["protocol"] == "blackhole"


def test_several_outbounds_replace_whole_list() -> None:
    merged = merge([doc("a.json", outbounds=[ob("o1")]),
                    doc("tail.json", outbounds=[ob("p1"), ob("p2")])])
    assert tags(merged.outbounds) == ["p1", "p2"]


@pytest.mark.parametrize("section", ["log", "routing", "dns", "transport", "policy", "api",
                                     "stats", "reverse"])
def test_sections_are_replaced_wholesale(section: str) -> None:
    merged = merge([doc("a.json", **{section: {"old": 1, "keep": 2}}),
                    doc("b.json", **{section: {"new": 3}})])
    located = merged.section(section)
    assert located.value == {"new": 3}  # not a deep merge: "keep" is gone
    assert located.file == "b.json"


def test_absent_section_keeps_earlier_one() -> None:
    merged = merge([doc("a.json", log={"loglevel": "debug"}), doc("b.json", policy={})])
    assert merged.section("log").file == "a.json"
    assert merged.section("policy").file == "b.json"


def test_port_is_taken_from_first_file_only() -> None:
    merged = merge([doc("a.json", port=1), doc("b.json", port=2)])
    assert merged.section("port").value == 1


def test_deprecated_handlers_come_first_in_build_order() -> None:
    merged = merge([doc("a.json", inbound=ib("single"), inboundDetour=[ib("d0"), ib("d1")],
                        inbounds=[ib("new")])])
    located = merged.all_inbounds()
    assert [i.value["tag"] for i in located] == ["single", "d0", "d1", "new"]
    assert [i.path for i in located] == ["inbound", "inboundDetour[0]", "inboundDetour[1]",
                                         "inbounds[0]"]


# --------------------------------------------------------------------------- confdirs


def write(path: Path, data: Dict[str, Any]) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_confdir_lexical_order_after_config_files(tmp_path: Path) -> None:
    confdir = tmp_path / "d"
    confdir.mkdir()
    for name in ("20.json", "10.json", "03.json", "notes.txt", "99.json.bak"):
        (confdir / name).write_text("{}")
    assert [os.path.basename(p) for p in expand_confdirs([str(confdir)])] == \
        ["03.json", "10.json", "20.json"]


def test_confdir_names_sort_by_their_bytes_as_go_sorts_them(tmp_path: Path) -> None:
    """U+E000 is EE 80 80 in UTF-8, before a name's undecodable FF byte; sorted as decoded
    text (FF as the surrogate U+DCFF) it came after."""
    confdir = tmp_path / "d"
    confdir.mkdir()
    for raw in (b"\xff.json", "\ue000.json".encode(), b"0.json"):
        with open(os.path.join(os.fsencode(confdir), raw), "w") as f:
            f.write("{}")
    found = [os.fsencode(os.path.basename(p)) for p in expand_confdirs([str(confdir)])]
    assert found == [b"0.json", "\ue000.json".encode(), b"\xff.json"]


@pytest.mark.parametrize("entry", ["directory", "dangling link"])
def test_a_confdir_entry_named_json_that_is_no_file_is_an_error(tmp_path: Path,
                                                                entry: str) -> None:
    """4.34 reads every ``*.json`` name of the directory (and panics on this one): it is
    refused, never skipped, so no part of a config is silently left out."""
    confdir = tmp_path / "d"
    confdir.mkdir()
    write(confdir / "a.json", {"outbounds": [ob("first")]})
    if entry == "directory":
        (confdir / "b.json").mkdir()
    else:
        (confdir / "b.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config([], [str(confdir)])


def test_confdir_paths_are_cleaned_before_the_tail_rule_reads_them(tmp_path: Path) -> None:
    """Go's path.Join cleans ``tail/../d``: no "tail" is left for the prepend rule to see."""
    (tmp_path / "tail").mkdir()
    confdir = tmp_path / "d"
    confdir.mkdir()
    write(confdir / "x.json", {"outbounds": [ob("second")]})
    found = expand_confdirs([str(tmp_path / "tail" / ".." / "d")])
    assert found == [str(confdir / "x.json")]
    config = load_config([write(tmp_path / "base.json", {"outbounds": [ob("first")]})],
                         [str(tmp_path / "tail" / ".." / "d")])
    assert [o.tag for o in config.outbounds] == ["second", "first"]  # prepended, not appended


def test_confdir_files_merge_after_c_files(tmp_path: Path) -> None:
    confdir = tmp_path / "d"
    confdir.mkdir()
    base = write(tmp_path / "base.json", {"outbounds": [ob("main")],
                                          "log": {"loglevel": "error"}})
    write(confdir / "b.json", {"outbounds": [ob("second")]})
    write(confdir / "a.json", {"outbounds": [ob("first")], "log": {"loglevel": "debug"}})
    config = load_config([base], [str(confdir)])
    # a.json prepends "first", then b.json prepends "second"
    assert [o.tag for o in config.outbounds] == ["second", "first", "main"]
    assert config.log.level == "debug"
    assert config.files == (base, str(confdir / "a.json"), str(confdir / "b.json"))


def test_load_config_end_marker_file_appends(tmp_path: Path) -> None:
    base = write(tmp_path / "base.json", {"outbounds": [ob("main")]})
    last = write(tmp_path / "90-Tail-block.json", {"outbounds": [ob("block", "blackhole")]})
    first = write(tmp_path / "10-first.json", {"outbounds": [ob("first")]})
    config = load_config([base, last, first])
    assert [o.tag for o in config.outbounds] == ["first", "main", "block"]
    assert [o.file for o in config.outbounds] == [first, base, last]


def test_missing_confdir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        expand_confdirs([str(tmp_path / "absent")])
    assert "cannot read config directory" in info.value.errors[0].message


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("value, expected", [
    (1080, PortRange(1080, 1080)),
    (0, PortRange(0, 0)),
    ("1080", PortRange(1080, 1080)),
    ("1000-1010", PortRange(1000, 1010)),
    ("65535", PortRange(65535, 65535)),
])
def test_port_forms(value: Any, expected: PortRange) -> None:
    assert parse_port_range(value) == expected


def test_port_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V2SYNC_TEST_PORT", "2000")
    monkeypatch.setenv("V2SYNC_TEST_RANGE", "3000-3002")
    assert parse_port_range("env:V2SYNC_TEST_PORT") == PortRange(2000, 2000)
    assert list(parse_port_range("env:V2SYNC_TEST_RANGE")) == [3000, 3001, 3002]


@pytest.mark.parametrize("value", [65536, -1, "abc", "10-", "-10", "20-10", " 80", "1e3",
                                   True, 80.0, None, [80], "env:V2SYNC_TEST_UNSET_VAR"])
def test_bad_ports(value: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("V2SYNC_TEST_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError) as info:
        parse_port_range(value, "inbounds[0].port")
    assert info.value.path == "inbounds[0].port"


def test_bad_env_port_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V2SYNC_TEST_PORT", "http")
    with pytest.raises(ConfigError, match="invalid port"):
        parse_port_range("env:V2SYNC_TEST_PORT")


def test_port_range_behaves_like_a_collection() -> None:
    ports = PortRange(10, 12)
    assert list(ports) == [10, 11, 12] and len(ports) == 3
    assert 11 in ports and 13 not in ports
    assert str(ports) == "10-12" and str(PortRange(5, 5)) == "5"


def test_string_list_forms() -> None:
    assert string_list(["a", "b"]) == ("a", "b")
    assert string_list("a,b") == ("a", "b")
    assert string_list("a, b") == ("a", " b")  # Go does not trim
    assert string_list(None) == ()
    with pytest.raises(ConfigError):
        string_list(5, "x")
