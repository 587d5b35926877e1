"""Share-link codecs: published vectors (tests/vectors/share_links.json, each with its
source), round trips of every form, the refusals that name what v2sync cannot honour, and
Hypothesis properties: any text parses or raises ConfigError, nothing else escapes."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Dict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.infra.share import url, vmess_json
from v2sync.infra.share.links import format_link, parse_link, parse_subscription
from v2sync.infra.share.model import (SHADOWSOCKS, TROJAN, VLESS, VMESS, VMESS_METHODS,
                                      ShareLink)

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "vectors" / "share_links.json")
                     .read_text(encoding="utf-8"))
UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"


def _vmess_json(obj: Dict[str, Any], encode=base64.b64encode) -> str:
    return "vmess://" + encode(json.dumps(obj).encode()).decode()


@pytest.mark.parametrize("vector", VECTORS["accepted"], ids=lambda v: v["link"][:40])
def test_published_vector_parses(vector: Dict[str, Any]) -> None:
    link = parse_link(vector["link"])
    for key, value in vector["expect"].items():
        assert getattr(link, key) == value, key
    assert parse_link(format_link(link)) == link


@pytest.mark.parametrize("vector", VECTORS["refused"], ids=lambda v: v["link"][:40])
def test_published_vector_refused_by_name(vector: Dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_link(vector["link"])
    assert info.value.path == f"link.{vector['part']}"
    assert vector["names"] in info.value.render()


def test_sip002_userinfo_is_written_as_the_document_writes_it() -> None:
    link = ShareLink(SHADOWSOCKS, "192.168.100.1", 8888, "test", "Example1", "aes-128-gcm")
    assert format_link(link) == "ss://YWVzLTEyOC1nY206dGVzdA@192.168.100.1:8888#Example1"


V2RAYN_OBJECT = {"v": "2", "ps": "n", "add": "a.example", "port": 443, "id": UUID, "aid": 0,
                 "scy": "chacha20-poly1305", "net": "ws", "type": "none", "host": "h.example",
                 "path": "/p", "tls": "tls", "sni": "s.example", "alpn": "h2,http/1.1"}


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode,
                                    lambda b: base64.b64encode(b).rstrip(b"="),
                                    lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")],
                         ids=["std", "urlsafe", "std-unpadded", "urlsafe-unpadded"])
def test_v2rayn_any_base64_numbers_as_numbers(encode) -> None:
    link = parse_link(_vmess_json(V2RAYN_OBJECT, encode))
    assert (link.port, link.method, link.network, link.sni, link.alpn) == (
        443, "chacha20-poly1305", "ws", "s.example", ("h2", "http/1.1"))


def test_v2rayn_numbers_as_strings_equal_numbers() -> None:
    as_strings = dict(V2RAYN_OBJECT, port="443", aid="0")
    assert parse_link(_vmess_json(as_strings)) == parse_link(_vmess_json(V2RAYN_OBJECT))


def test_v2rayn_dump_writes_strings_and_standard_padded_base64() -> None:
    text = format_link(parse_link(_vmess_json(V2RAYN_OBJECT)))
    obj = json.loads(base64.b64decode(text[len("vmess://"):], validate=True))
    assert obj == dict(V2RAYN_OBJECT, port="443", aid="0")
    assert list(obj) == list(vmess_json.KNOWN_KEYS)


def test_v2rayn_without_version_reads_as_2_and_other_versions_are_refused() -> None:
    without = {k: v for k, v in V2RAYN_OBJECT.items() if k != "v"}
    assert parse_link(_vmess_json(without)) == parse_link(_vmess_json(V2RAYN_OBJECT))
    with pytest.raises(ConfigError, match="version '1'"):
        parse_link(_vmess_json(dict(V2RAYN_OBJECT, v=1)))


def test_unknown_v2rayn_fields_are_reported_as_ignored() -> None:
    link = parse_link(_vmess_json(dict(V2RAYN_OBJECT, fp="chrome")))
    assert link.ignored == ("fp",)


def test_url_forms_with_ipv6_and_percent_encoding() -> None:
    link = parse_link("trojan://p%40ss%3Aw%2Fd@[2001:db8::1]:443?sni=t.example"
                      "&alpn=h2%2Chttp%2F1.1&type=ws&path=%2Fa%20b&host=h.example#T%20j")
    assert (link.protocol, link.secret, link.address, link.security, link.alpn, link.path,
            link.name) == (TROJAN, "p@ss:w/d", "2001:db8::1", "tls", ("h2", "http/1.1"),
                           "/a b", "T j")
    assert parse_link(format_link(link)) == link


@pytest.mark.parametrize("link, part, named", [
    ("vless://%s@a.example:443?security=reality&pbk=x&sid=1&fp=chrome" % UUID, "security",
     "REALITY"),
    ("vless://%s@a.example:443?type=grpc&serviceName=s&security=tls" % UUID, "type", "gRPC"),
    ("vless://%s@a.example:443?type=http&path=%%2F" % UUID, "type", "HTTP/2"),
    ("vless://%s@a.example:443?type=quic&quicSecurity=none" % UUID, "type", "QUIC"),
    ("vless://%s@a.example:443?flow=xtls-rprx-vision&security=tls" % UUID, "flow", "XTLS"),
    ("vless://%s@a.example:443?encryption=aes" % UUID, "encryption", "none"),
    ("vless://%s@a.example:443?serviceName=s" % UUID, "serviceName", "gRPC"),
    ("vless://%s@a.example:443?type=tcp&type=ws" % UUID, "type", "twice"),
    ("vless://%s@a.example:0" % UUID, "port", "1-65535"),
    ("vless://%s@a.example:99999" % UUID, "address", "port"),
    ("vless://%s@a.example" % UUID, "port", "missing"),
    ("vless://a.example:443", "id", "missing"),
    ("vless://not-a-uuid@a.example:443", "id", "UUID"),
    ("vless://%s@a.example:443/extra" % UUID, "path", "query"),
    ("vless://%s@a_b c:443" % UUID, "address", "domain"),
    ("vless://%s@[fe80::1:443" % UUID, "address", "malformed"),
    ("trojan://@a.example:443", "password", "empty"),
    ("ss://YWVzLTEyOC1nY206dGVzdA@a.example:8388/?plugin=v2ray-plugin%3Bserver", "plugin",
     "v2ray-plugin"),
    ("ss://cmM0LW1kNTpwYXNzd2Q@a.example:8388", "method", "rc4-md5"),
    ("ss://bm9jb2xvbg@a.example:8388", "userinfo", "':'"),
    ("ss://!!!@a.example:8388", "userinfo", "base64"),
    ("vmess://eyJ2IjozfQ", "v", "version"),
    ("vmess://bm90IGpzb24", "json", "JSON"),
    ("vmess://W10", "json", "object"),
    ("vmess://!!", "base64", "base64"),
    ("vmess://" + base64.b64encode(json.dumps(dict(V2RAYN_OBJECT, net="kcp")).encode())
     .decode(), "type", "mKCP"),
    ("vmess://" + base64.b64encode(json.dumps(dict(V2RAYN_OBJECT, port="x")).encode())
     .decode(), "port", "number"),
    # Digits str.isdigit() passes but int() refuses ("²"), or reads as 80 ("٨٠").
    *[("vmess://" + base64.b64encode(json.dumps(dict(V2RAYN_OBJECT, port=port)).encode())
       .decode(), "port", "number") for port in ["\u00b2", "\u0668\u0660"]],
    ("vmess://" + base64.b64encode(json.dumps(dict(V2RAYN_OBJECT, scy="zero")).encode())
     .decode(), "security", "zero"),
    ("vmess://" + base64.b64encode(json.dumps(dict(V2RAYN_OBJECT, ps=[])).encode())
     .decode(), "ps", "string"),
    ("vmess://" + base64.b64encode(json.dumps(dict(V2RAYN_OBJECT, tls="reality")).encode())
     .decode(), "security", "REALITY"),
    # a control byte in a header or path made a config `test` refused (found by a review)
    ("vmess://" + base64.b64encode(json.dumps(dict(V2RAYN_OBJECT, host="a\r\nX: y")).encode())
     .decode(), "host", "control character"),
    ("vless://%s@a.example:443?type=ws&path=/a%%00b" % UUID, "path", "control character"),
    ("trojan://p@a.example:443?sni=a%%0Ab" , "sni", "control character"),
    ("http://a.example", "", "not a share link"),
    ("vmess://" + "A" * 9000, "", "characters long"),
])
def test_bad_links_name_the_part(link: str, part: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_link(link, "links[3]")
    assert info.value.path == ("links[3]." + part if part else "links[3]")
    assert named in info.value.render()


def test_subscription_base64_and_plain_lines_and_comments() -> None:
    lines = [format_link(ShareLink(VMESS, "a.example", 443, UUID, method="auto")),
             "# a comment", "",
             format_link(ShareLink(TROJAN, "b.example", 443, "pw", security="tls"))]
    plain = "\r\n".join(lines).encode()
    assert parse_subscription(plain) == parse_subscription(base64.b64encode(plain))
    assert parse_subscription(base64.urlsafe_b64encode(plain).rstrip(b"="))[1].address == \
        "b.example"


def test_empty_query_values_read_as_absent() -> None:
    # Marzban writes every key, empty ones too; v2rayN's GetQueryValue reads "" as absent
    link = parse_link("vless://%s@m.example:443?security=tls&type=ws&headerType=&path=%%2Fws"
                      "&host=&sni=m.example&fp=&alpn=#WS" % UUID)
    assert (link.network, link.path, link.host, link.sni, link.alpn) == ("ws", "/ws", "", "m.example", ())
    assert link.ignored == ()
    assert parse_link("trojan://pw@t.example:443?type=&sni=").network == "tcp"


def test_field_names_in_any_case_as_v2rayn_reads_them() -> None:
    link = parse_link("vless://%s@a.example:443?Security=tls&Type=ws&Path=%%2Fp&SNI=s.example" % UUID)
    assert (link.security, link.network, link.path, link.sni) == ("tls", "ws", "/p", "s.example")
    with pytest.raises(ConfigError, match="twice"):
        parse_link("vless://%s@a.example:443?type=ws&Type=tcp" % UUID)
    for query in ("sni=&sni=a.example", "sni=a.example&sni="):  # twice, empty or not
        with pytest.raises(ConfigError, match="twice"):
            parse_link("vless://%s@a.example:443?%s" % (UUID, query))


def test_raw_is_tcp() -> None:
    # Xray renamed the tcp transport "raw"; v2rayN reads both
    assert parse_link("vless://%s@a.example:443?type=raw&headerType=http" % UUID).network == "tcp"
    raw = {"v": "2", "add": "a.example", "port": 443, "id": UUID, "net": "raw"}
    encoded = base64.b64encode(json.dumps(raw).encode()).decode()
    assert parse_link("vmess://" + encoded).network == "tcp"


def test_shadowsocks_export_names_chacha20_as_sip004_does() -> None:
    text = format_link(ShareLink(SHADOWSOCKS, "s.example", 8388, "pw", method="chacha20-poly1305"))
    userinfo = text[len("ss://"):text.index("@")]
    assert base64.urlsafe_b64decode(userinfo + "=" * (-len(userinfo) % 4)) == b"chacha20-ietf-poly1305:pw"
    assert parse_link(text).method == "chacha20-poly1305"


def test_subscription_keeps_what_it_can_use_when_asked() -> None:
    # v2rayN skips the lines it cannot read; providers mix in hysteria2, REALITY, gRPC...
    good = format_link(ShareLink(TROJAN, "b.example", 443, "pw", security="tls"))
    data = "\ufeff" + "\n".join([good, "hysteria2://x@h.example:443", good,
                                  "vless://%s@r.example:443?security=reality&pbk=k" % UUID])
    skipped: list = []
    links = parse_subscription(base64.b64encode(data.encode()), "sub.txt", skipped)
    assert [link.address for link in links] == ["b.example", "b.example"]
    assert [e.path for e in skipped] == ["sub.txt line 2", "sub.txt line 4.security"]
    nothing_usable = "\n".join(["hysteria2://x@h.example:443", "junk"]).encode()
    with pytest.raises(ConfigErrors) as info:
        parse_subscription(nothing_usable, "sub.txt", skipped)
    assert [e.path for e in info.value.errors] == ["sub.txt line 1", "sub.txt line 2"]


def test_subscription_reports_every_bad_line_by_number() -> None:
    good = format_link(ShareLink(TROJAN, "b.example", 443, "pw", security="tls"))
    with pytest.raises(ConfigErrors) as info:
        parse_subscription("\n".join([good, "junk", good, "ss://x@y"]).encode(), "sub.txt")
    assert [e.path for e in info.value.errors] == ["sub.txt line 2", "sub.txt line 4.userinfo"]


@pytest.mark.parametrize("data, message", [(b"", "no links"), (b"# only\n", "no links"),
                                           (b"@@@@", "not a share link"),
                                           (b"x" * (4 * 1024 * 1024 + 1), "larger")])
def test_bad_subscriptions(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_subscription(data)
    assert message in info.value.render()


# --------------------------------------------------------------------------- properties

NAME = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=1, max_size=3).map(lambda ls: ".".join(ls + ["example"]))
IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(str)
ADDRESS = st.one_of(DOMAIN, IPV4, IPV6)
PORT = st.integers(1, 65535)
# A path holds no control character (``model.check_text``); a name and a secret may.
PATH = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).map(
    lambda s: "/" + s)
ALPN = st.lists(st.sampled_from(["h2", "http/1.1"]), max_size=2, unique=True).map(tuple)


@st.composite
def transports(draw) -> Dict[str, Any]:
    network = draw(st.sampled_from(["tcp", "ws"]))
    fields: Dict[str, Any] = {"network": network}
    if network == "ws":
        fields.update(path=draw(PATH), host=draw(st.one_of(st.just(""), DOMAIN)))
    elif draw(st.booleans()):
        fields.update(header_type="http", path=draw(PATH),
                      host=",".join(draw(st.lists(DOMAIN, min_size=1, max_size=2))))
    if draw(st.booleans()):
        fields.update(security="tls", sni=draw(st.one_of(st.just(""), DOMAIN)), alpn=draw(ALPN))
    return fields


@st.composite
def share_links(draw, protocols=(VMESS, VLESS, TROJAN, SHADOWSOCKS), max_alter_id=65535
                ) -> ShareLink:
    protocol = draw(st.sampled_from(protocols))
    common = dict(address=draw(ADDRESS), port=draw(PORT), name=draw(NAME))
    if protocol == SHADOWSOCKS:
        method = draw(st.sampled_from(["aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"]))
        return ShareLink(protocol, secret=draw(NAME.filter(bool)), method=method, **common)
    fields = draw(transports())
    if protocol == TROJAN:
        return ShareLink(protocol, secret=draw(NAME.filter(bool)), **common, **fields)
    secret = str(draw(st.uuids()))
    if protocol == VLESS:
        return ShareLink(protocol, secret=secret, method="none", **common, **fields)
    return ShareLink(protocol, secret=secret, method=draw(st.sampled_from(VMESS_METHODS)),
                     alter_id=draw(st.integers(0, max_alter_id)), **common, **fields)


@settings(max_examples=300, deadline=None)
@given(share_links())
def test_every_link_round_trips(link: ShareLink) -> None:
    assert parse_link(format_link(link)) == link


@settings(max_examples=150, deadline=None)
@given(share_links(protocols=(VMESS,), max_alter_id=0))
def test_vmess_round_trips_through_the_xray91_url_too(link: ShareLink) -> None:
    assert parse_link(url.dump(link)) == link


def _parses_or_refuses(text: str) -> None:
    try:
        result = parse_link(text)
    except ConfigError as e:
        assert e.render()
    else:
        assert isinstance(result, ShareLink)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["vmess://", "vless://", "trojan://", "ss://", ""]), st.text(max_size=200))
def test_any_text_parses_or_raises_config_error(scheme: str, rest: str) -> None:
    _parses_or_refuses(scheme + rest)


@settings(max_examples=400, deadline=None)
@given(share_links(), st.data())
def test_damaged_links_parse_or_raise_config_error(link: ShareLink, data) -> None:
    text = format_link(link)
    cut = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.text(max_size=5))
    _parses_or_refuses(text[:cut] + junk + text[cut + data.draw(st.integers(0, 3)):])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_subscription_bytes_parse_or_raise_config_error(data: bytes) -> None:
    try:
        assert parse_subscription(data)
    except ConfigError as e:
        assert e.render()
