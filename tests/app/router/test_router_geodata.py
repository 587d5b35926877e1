"""geoip.dat / geosite.dat: the protobuf codec, lazy loading, asset lookup and its errors."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List

import pytest
from hypothesis import given, settings, strategies as st

from v2sync.app.router.geodata import (
    PRIVATE_CIDRS, GeoData, SiteDomain, asset_dir, default_search_dirs, encode_geoip_list,
    encode_geosite_list, index_entries,
)
from v2sync.app.router.matchers import DomainKind
from v2sync.common.errors import ConfigError

ENTRY_TAG = b"\x0a"  # field 1, length-delimited


def write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def entry(body: bytes) -> bytes:
    assert len(body) < 128
    return ENTRY_TAG + bytes([len(body)]) + body


def test_geoip_round_trip(tmp_path: Path) -> None:
    lists = [("CN", ["1.0.1.0/24", "240e::/20"]), ("US", ["8.8.8.0/24"])]
    write(tmp_path, "geoip.dat", encode_geoip_list(lists))
    data = GeoData([str(tmp_path)])
    assert [str(c) for c in data.geoip("geoip.dat", "cn")] == ["1.0.1.0/24", "240e::/20"]
    assert [str(c) for c in data.geoip("geoip.dat", "Us")] == ["8.8.8.0/24"]


def test_geosite_round_trip_keeps_kinds_and_attributes(tmp_path: Path) -> None:
    domains = [SiteDomain(DomainKind.PLAIN, "kw"), SiteDomain(DomainKind.REGEX, "^a$", ("x",)),
               SiteDomain(DomainKind.DOMAIN, "d.example", ("ads", "cn")),
               SiteDomain(DomainKind.FULL, "f.example")]
    write(tmp_path, "geosite.dat", encode_geosite_list([("google", domains)]))
    assert GeoData([str(tmp_path)]).geosite("geosite.dat", "GOOGLE") == domains


def test_index_is_case_insensitive_and_the_first_entry_wins() -> None:
    raw = encode_geoip_list([("cn", ["1.0.0.0/8"]), ("CN", ["2.0.0.0/8"]), ("", [])])
    index = index_entries(raw)
    assert sorted(index) == ["", "cn"]
    assert index["cn"][0] < index[""][0]


def test_only_named_lists_are_decoded(tmp_path: Path) -> None:
    good = encode_geoip_list([("GOOD", ["10.0.0.0/8"])])
    broken = entry(b"\x0a\x03BAD" + b"\x12\x03\x0a\x01\x01")  # a CIDR whose IP is 1 byte long
    write(tmp_path, "geoip.dat", broken + good)
    data = GeoData([str(tmp_path)])
    assert [str(c) for c in data.geoip("geoip.dat", "good")] == ["10.0.0.0/8"]
    with pytest.raises(ConfigError, match="IP of 1 bytes"):
        data.geoip("geoip.dat", "bad")


def test_unknown_fields_are_skipped(tmp_path: Path) -> None:
    cidr = b"\x0a\x04\x0a\x00\x00\x00" + b"\x10\x08" + b"\x18\x05" + b"\x25abcd"  # + varint, fixed32
    body = b"\x0a\x02XX" + b"\x19" + bytes(8) + b"\x12" + bytes([len(cidr)]) + cidr  # + fixed64
    write(tmp_path, "geoip.dat", entry(body) + b"\x10\x01")  # + an unknown top-level varint
    assert [str(c) for c in GeoData([str(tmp_path)]).geoip("geoip.dat", "xx")] == ["10.0.0.0/8"]


@pytest.mark.parametrize("kind, body, message", [
    ("geoip", b"\x0a\x01A" + b"\x12\x08\x0a\x04\x0a\x00\x00\x00\x10\x21", "prefix 33"),
    ("geosite", b"\x0a\x01A" + b"\x12\x04\x08\x07\x12\x00", "unknown type 7"),
    ("geoip", b"\x0a\x01A" + b"\x13", "wire type 3"),
    ("geoip", b"\x0a\x05A", "runs past the end"),
    ("geosite", b"\x0a\x01A" + b"\x12\x03\x12\x01\xff", "invalid UTF-8"),
])
def test_malformed_entries_are_config_errors_naming_the_file(tmp_path: Path, kind: str, body: bytes,
                                                             message: str) -> None:
    path = write(tmp_path, "x.dat", entry(body))
    with pytest.raises(ConfigError) as caught:
        getattr(GeoData([str(tmp_path)]), kind)("x.dat", "a", "routing.rules[0].ip[0]")
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert caught.value.path == "routing.rules[0].ip[0]"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(["geoip", "geosite"]))
def test_any_bytes_load_or_raise_config_error(tmp_path_factory: pytest.TempPathFactory, raw: bytes,
                                              kind: str) -> None:
    directory = tmp_path_factory.getbasetemp() / "fuzz-dat"
    directory.mkdir(exist_ok=True)
    write(directory, "f.dat", raw)
    data = GeoData([str(directory)])
    try:
        result = getattr(data, kind)("f.dat", "")
    except ConfigError:
        return
    assert isinstance(result, list)


def test_missing_file_names_the_file_and_every_directory(tmp_path: Path) -> None:
    dirs = [str(tmp_path / "one"), str(tmp_path / "two")]
    with pytest.raises(ConfigError) as caught:
        GeoData(dirs).geosite("geosite.dat", "cn", "routing.rules[2].domain[0]")
    text = str(caught.value)
    assert "geosite.dat" in text and dirs[0] in text and dirs[1] in text
    assert caught.value.path == "routing.rules[2].domain[0]"


def test_missing_list_names_the_list_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "geosite.dat", encode_geosite_list([("a", [SiteDomain(DomainKind.FULL, "x")])]))
    with pytest.raises(ConfigError) as caught:
        GeoData([str(tmp_path)]).geosite("geosite.dat", "nope")
    assert "'nope'" in str(caught.value) and str(path) in str(caught.value)


def test_private_is_built_in_without_a_file(tmp_path: Path) -> None:
    cidrs = GeoData([str(tmp_path)]).private_cidrs()
    assert [str(c) for c in cidrs] == list(PRIVATE_CIDRS)


def test_private_prefers_the_file_list_and_falls_back_when_absent(tmp_path: Path) -> None:
    with_private, without = tmp_path / "with", tmp_path / "without"
    with_private.mkdir()
    without.mkdir()
    write(with_private, "geoip.dat", encode_geoip_list([("PRIVATE", ["10.0.0.0/8"])]))
    write(without, "geoip.dat", encode_geoip_list([("CN", ["1.0.0.0/8"])]))
    assert [str(c) for c in GeoData([str(with_private)]).private_cidrs()] == ["10.0.0.0/8"]
    assert len(GeoData([str(without)]).private_cidrs()) == len(PRIVATE_CIDRS)


def test_files_are_searched_in_order_and_absolute_names_stay_inside(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    (second / "sub").mkdir(parents=True)
    first.mkdir()
    write(second / "sub", "g.dat", encode_geoip_list([("A", ["1.1.1.1"])]))
    data = GeoData([str(first), str(second)])
    assert data.locate("/sub/g.dat") == str(second / "sub" / "g.dat")  # Go's filepath.Join
    assert data.locate("g.dat") is None


def test_asset_dir_environment_order() -> None:
    env = {"V2RAY_LOCATION_ASSET": "/v2ray", "V2SYNC_LOCATION_ASSET": "/v2sync"}
    assert asset_dir(env) == "/v2sync"
    assert asset_dir({"V2RAY_LOCATION_ASSET": "/v2ray"}) == "/v2ray"
    assert asset_dir({"v2ray.location.asset": "/dotted", "V2RAY_LOCATION_ASSET": "/v2ray"}) == "/dotted"
    assert asset_dir({}) == os.path.dirname(os.path.abspath(sys.executable))
    dirs: List[str] = list(default_search_dirs({"V2RAY_LOCATION_ASSET": "/x"}))
    assert dirs == ["/x", "/usr/local/share/v2ray", "/usr/share/v2ray"]
