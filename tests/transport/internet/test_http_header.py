"""TCP "http" header disguise codec: 4.34's JSON defaults, the heads it writes, and the server's
400 / 404 verdicts, without sockets. The same heads go to the real v2ray 4.34 and to v2sync,
and the answers are compared, in tests/scenarios/test_inbound_replies_differential.py
(HEADER_PROBES)."""
from __future__ import annotations

import random
from datetime import datetime

import pytest
from hypothesis import given, strategies as st

from v2sync.common.errors import ConfigError, RemoteProtocolError
from v2sync.transport.internet.headers import http
from v2sync.transport.internet.headers.http import (BAD_REQUEST, HEAD_LIMIT, MAX_HEAD,
                                                    NOT_FOUND, HttpHeaderConfig,
                                                    build_header_config, parse_request_head,
                                                    parse_response_head, request_bytes,
                                                    response_bytes)
from support.codec_checks import assert_decodes as check_decodes, assert_garbage
from support.deep import deep_json

TRAILER = b"\x00\x01first VMess bytes\r\n\r\n"
DEFAULT = build_header_config({"type": "http"})
CUSTOM = build_header_config({"type": "http", "request": {
    "version": "1.0", "method": "POST", "path": ["/a", "/b/c"],
    "headers": {"Host": ["x.example", "y.example"], "X-Id": "7"}}})
WHEN = datetime(1994, 11, 6, 8, 49, 37)
UA_DESKTOP, UA_IPHONE = http.DEFAULT_REQUEST_HEADERS[1][1]


def parse_default(buf):
    return parse_request_head(buf, DEFAULT)


def response_frame(buf):
    used = parse_response_head(buf)
    return None if used is None else ("head", used)


def long_head(total: int) -> bytes:
    """A GET / head of exactly ``total`` bytes, padded by one long X header."""
    base = b"GET / HTTP/1.1\r\nX: "
    return base + b"a" * (total - len(base) - 4) + b"\r\n\r\n"


def with_line_at(start: int, line: bytes) -> bytes:
    """A GET / head whose header ``line`` starts at byte ``start``."""
    base = b"GET / HTTP/1.1\r\nX: "
    return base + b"a" * (start - len(base) - 2) + b"\r\n" + line + b"\r\n\r\n"


# -- config -----------------------------------------------------------------------------------

def test_defaults_are_434s():
    assert DEFAULT == HttpHeaderConfig()
    assert (DEFAULT.request_version, DEFAULT.request_method, DEFAULT.request_paths) == \
        ("1.1", "GET", ("/",))
    assert [name for name, _ in DEFAULT.request_headers] == \
        ["Host", "User-Agent", "Accept-Encoding", "Connection", "Pragma"]
    assert dict(DEFAULT.request_headers)["Host"] == ("www.baidu.com", "www.bing.com")
    assert "Chrome/53.0.2785.143" in UA_DESKTOP and "CriOS/53.0.2785.109" in UA_IPHONE
    assert (DEFAULT.response_version, DEFAULT.response_status, DEFAULT.response_reason) == \
        ("1.1", "200", "OK")
    assert DEFAULT.response_headers[-1] == ("Cache-Control", ("private", "no-cache"))


def test_user_headers_replace_all_defaults_sorted_and_split_on_commas():
    cfg = build_header_config({"type": "http", "request": {
        "headers": {"b": "x, y", "A": ["1"], "Host": [], "Z": [None, "q"]}}})
    # sortMapKeys is byte order; a string is a comma list, untrimmed (common.go StringList)
    assert cfg.request_headers == (("A", ("1",)), ("Host", ()), ("Z", ("", "q")),
                                   ("b", ("x", " y")))
    assert request_bytes(cfg, random.Random(0)).count(b"\r\n") == 6
    assert b"\r\nHost: \r\n" in request_bytes(cfg)  # an empty list picks ""


def test_empty_values_and_objects_keep_defaults():
    cfg = build_header_config({"type": "http", "request": {
        "version": "", "method": "", "path": [], "headers": {}}, "response": None})
    assert cfg == DEFAULT


def test_keys_match_case_insensitively_and_type_is_lowercased():
    cfg = build_header_config({"type": "HTTP", "Request": {"PATH": "/p,/q", "Method": "PUT"},
                               "response": {"STATUS": "404"}})
    assert cfg.request_paths == ("/p", "/q") and cfg.request_method == "PUT"
    assert (cfg.response_status, cfg.response_reason) == ("404", "OK")


@pytest.mark.parametrize("header, path", [
    ({"type": "none"}, "type"),
    ({"type": "http", "request": {"headers": {"Host": None}}}, "request.headers.Host"),
    ({"type": "http", "response": {"headers": {"a.b": None}}}, 'response.headers["a.b"]'),
    ({"type": "http", "request": {"path": 5}}, "request.path"),
    ({"type": "http", "request": {"path": ["/a", 5]}}, "request.path"),
    ({"type": "http", "request": {"version": 2}}, "request.version"),
    ({"type": "http", "response": {"headers": ["x"]}}, "response.headers"),
    ({"type": "http", "request": []}, "request"),
])
def test_config_errors_434_rejects(header, path):
    with pytest.raises(ConfigError) as info:
        build_header_config(header)
    assert info.value.path == path


def test_a_deeply_nested_type_is_named_not_repr_d():
    with pytest.raises(ConfigError) as info:
        build_header_config({"type": deep_json()})
    assert info.value.path == "type" and "header type [...] is not" in info.value.message


def test_unreachable_path_is_a_warning_only(caplog):
    cfg = build_header_config({"type": "http", "request": {"path": ["/a%20b", "/q?x=1"]}})
    assert cfg.request_paths == ("/a%20b", "/q?x=1")
    assert caplog.text.count("never accepts it") == 2


# -- writing ----------------------------------------------------------------------------------

def test_default_request_head():
    head = request_bytes(DEFAULT, random.Random(3))
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET / HTTP/1.1"
    assert lines[1] in (b"Host: www.baidu.com", b"Host: www.bing.com")
    assert lines[2] in (b"User-Agent: " + ua.encode() for ua in (UA_DESKTOP, UA_IPHONE))
    assert lines[3:] == [b"Accept-Encoding: gzip, deflate", b"Connection: keep-alive",
                         b"Pragma: no-cache", b"", b""]


def test_default_response_head():
    head = response_bytes(DEFAULT, random.Random(3), now=WHEN)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert lines[1] in (b"Content-Type: application/octet-stream", b"Content-Type: video/mpeg")
    assert lines[2:4] == [b"Transfer-Encoding: chunked", b"Connection: keep-alive"]
    assert lines[5] in (b"Cache-Control: private", b"Cache-Control: no-cache")
    assert lines[6:] == [b"Date: Sun, 06 Nov 1994 08:49:37 GMT", b"", b""]  # http.TimeFormat


def test_configured_date_header_suppresses_the_generated_one():
    cfg = build_header_config({"type": "http", "response": {
        "version": "1.0", "status": "301", "reason": "Moved", "headers": {"date": "then"}}})
    assert response_bytes(cfg, now=WHEN) == b"HTTP/1.0 301 Moved\r\ndate: then\r\n\r\n"


def test_error_replies_are_434s_with_date_appended():
    assert http.dated(NOT_FOUND, WHEN) == (
        b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nCache-Control: private\r\n"
        b"Content-Length: 0\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n")
    assert BAD_REQUEST.startswith(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n")


def test_random_choice_comes_from_the_given_rand():
    assert request_bytes(CUSTOM, random.Random(9)) == request_bytes(CUSTOM, random.Random(9))
    heads = {request_bytes(CUSTOM, random.Random(seed)) for seed in range(40)}
    assert {h.split(b" ")[1] for h in heads} == {b"/a", b"/b/c"}
    assert {h.split(b"\r\n")[1] for h in heads} == {b"Host: x.example", b"Host: y.example"}


def test_single_values_roll_no_dice():
    class NoDice:
        def randrange(self, n):
            raise AssertionError("config.go pickString rolls only for two or more values")

    cfg = build_header_config({"type": "http", "request": {"headers": {"A": "1"}},
                               "response": {"headers": {"B": "2"}}})
    assert request_bytes(cfg, NoDice()) == b"GET / HTTP/1.1\r\nA: 1\r\n\r\n"
    assert response_bytes(cfg, NoDice(), now=WHEN).startswith(b"HTTP/1.1 200 OK\r\nB: 2\r\n")


# -- the server reading a request head --------------------------------------------------------

def test_default_request_decodes():
    check_decodes(parse_default, request_bytes(DEFAULT, random.Random(1)), "/", TRAILER)


@pytest.mark.parametrize("seed", range(4))
def test_custom_request_round_trips(seed):
    wire = request_bytes(CUSTOM, random.Random(seed))
    path = wire.split(b" ")[1].decode()
    check_decodes(lambda buf: parse_request_head(buf, CUSTOM), wire, path, TRAILER)


def test_wrong_path_is_404():
    assert_garbage(parse_default, b"GET /other HTTP/1.1\r\n\r\n", NOT_FOUND)
    assert_garbage(lambda buf: parse_request_head(buf, CUSTOM),
                   b"POST /a/ HTTP/1.0\r\n\r\n", NOT_FOUND)


@pytest.mark.parametrize("wire", [
    b"GET /?q=1 HTTP/1.1\r\n\r\n",               # the query is not part of the path
    b"GET http://example.com/ HTTP/1.1\r\n\r\n",  # absolute form: only its path counts
    b"get / HTTP/2.0\r\nFoo Bar: x\r\n\r\n",      # any token method, any HTTP/d.d, odd names
    b"GET / HTTP/1.1\nHost: x\n\r\n\r\n",         # bare LF lines, as textproto reads them
    b"GET / HTTP/1.0\r\nTransfer-Encoding: gzip\r\n\r\n",  # ignored before HTTP/1.1
    b"HEAD / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5 \r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",      # obs-fold continuation
])
def test_go_accepts(wire):
    assert parse_default(wire + TRAILER) == ("/", len(wire))


@pytest.mark.parametrize("wire, reply", [
    (b"GET /a%20b HTTP/1.1\r\n\r\n", NOT_FOUND),  # compared after unescaping: "/a b"
    (b"GET * HTTP/1.1\r\n\r\n", NOT_FOUND),
    (b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", NOT_FOUND),  # authority form: path ""
    (b"garbage\r\n\r\n", BAD_REQUEST),
    (b"\r\nGET / HTTP/1.1\r\n\r\n", BAD_REQUEST),
    (b"G@T / HTTP/1.1\r\n\r\n", BAD_REQUEST),
    (b"GET / HTTP/1.10\r\n\r\n", BAD_REQUEST),
    (b"GET /%zz HTTP/1.1\r\n\r\n", BAD_REQUEST),
    (b"GET /\x01 HTTP/1.1\r\n\r\n", BAD_REQUEST),
    (b"GET http://h^st/ HTTP/1.1\r\n\r\n", BAD_REQUEST),
    (b"GET http://[fe80::1%25%2f]/ HTTP/1.1\r\n\r\n", BAD_REQUEST),
    (b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTrailer: Trailer\r\n\r\n", BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n", BAD_REQUEST),
])
def test_go_rejects(wire, reply):
    assert_garbage(parse_default, wire + TRAILER, reply)


def test_paths_compare_after_unescaping():
    cfg = build_header_config({"type": "http", "request": {"path": ["/a%20b", "/a b"]}})
    assert parse_request_head(b"GET /a%20b HTTP/1.1\r\n\r\n", cfg) == ("/a b", 23)


def test_head_size_limit():
    assert MAX_HEAD == 8192 and HEAD_LIMIT == 10224  # five 2048-byte reads, 4 bytes kept each
    wire = long_head(HEAD_LIMIT)
    assert parse_default(wire + TRAILER) == ("/", HEAD_LIMIT)
    assert parse_default(wire[:-1]) is None
    assert_garbage(parse_default, long_head(HEAD_LIMIT + 1), BAD_REQUEST)
    assert_garbage(parse_default, b"GET / HTTP/1.1\r\nX: " + b"a" * HEAD_LIMIT, BAD_REQUEST)


@pytest.mark.parametrize("cut", [2044, 4088, 6132, 8176])
def test_a_read_boundary_inside_a_header_name_is_400(cut):
    # Go parses all but the last 4 bytes of each 2048-byte read that lacks the blank line
    name_cut = with_line_at(cut - 3, b"Yyyyyyyy: b")
    assert name_cut[cut - 3:cut] == b"Yyy"
    assert_garbage(parse_default, name_cut[:cut + 4], BAD_REQUEST)  # before the blank line
    assert parse_default(name_cut[:cut + 3]) is None
    after_colon = with_line_at(cut - 9, b"Yyyyyyyy: b")
    assert after_colon[cut - 9:cut] == b"Yyyyyyyy:"
    assert parse_default(after_colon) == ("/", len(after_colon))


# -- the client skipping a response head ------------------------------------------------------

def test_response_head_is_skipped():
    wire = response_bytes(CUSTOM, random.Random(2))
    check_decodes(response_frame, wire, "head", TRAILER)
    check_decodes(response_frame, b"HTTP/1.1 200 OK\r\n\r\n", "head", b"\r\n\r\n")


def test_response_head_over_one_read_is_refused_like_434():
    # 4.34's client parses a partial response head as a request: "invalid method HTTP/1.1"
    head = b"HTTP/1.1 200 OK\r\nX: " + b"a" * (2048 - 24) + b"\r\n\r\n"
    assert len(head) == 2048 and parse_response_head(head + TRAILER) == 2048
    with pytest.raises(RemoteProtocolError) as info:
        parse_response_head(head[:-4] + b"a" + head[-4:])
    assert info.value.reply is None


# -- properties -------------------------------------------------------------------------------

HEAD_BITS = st.sampled_from([b"GET", b" ", b"/", b"*", b"http://", b"[", b"]", b"%25", b"%2",
                             b"@", b":", b"?", b"HTTP/1.1", b"\r\n", b"\n", b"\t", b"Host: a",
                             b"Content-Length: 5", b"Transfer-Encoding: chunked", b"\xc3\xa9"])


HEADS = st.lists(HEAD_BITS, max_size=20).map(lambda bits: b"".join(bits) + b"\r\n\r\n")


@given(data=st.one_of(st.binary(max_size=300), HEADS))
def test_any_bytes_parse_need_more_or_raise(data):
    try:
        result = parse_default(data)
    except RemoteProtocolError as e:
        assert e.reply in (BAD_REQUEST, NOT_FOUND)
    else:
        assert result is None or (result[0] == "/" and 0 < result[1] <= len(data))
    try:
        used = parse_response_head(data)
    except RemoteProtocolError:
        return
    assert used is None or data[used - 4:used] == b"\r\n\r\n"


def folded_head(lines: int) -> bytes:
    """A GET / head whose one header is folded over ``lines`` continuation lines."""
    return b"GET / HTTP/1.1\r\nX-F: a\r\n" + b" b\r\n" * lines + b"\r\n"


@pytest.mark.parametrize("head", [folded_head(2000), long_head(9000),
                                  with_line_at(4088, b"Bad Name: x")],
                         ids=["folded", "long", "cut-name"])
def test_a_trickled_head_parses_each_cut_once_and_as_in_one_piece(monkeypatch, head) -> None:
    """Fed a byte at a time with one HeadScan, a head gives the one-piece answer, and each
    2044-byte cut is parsed once: a folded head trickled to a server cost a parse of every
    cut per byte, ~2.8 ms at 10 KB, and stalled every inbound's handshakes (found by a
    review)."""
    try:
        whole = ("ok", parse_default(head))
    except RemoteProtocolError as e:
        whole = ("refused", e.reply)
    calls = []
    real = http._read_request
    monkeypatch.setattr(http, "_read_request", lambda data: calls.append(len(data)) or real(data))
    scan = http.HeadScan()
    result = None
    try:
        for end in range(1, len(head) + 1):
            result = parse_request_head(head[:end], DEFAULT, scan)
            if result is not None:
                break
        trickled = ("ok", result)
    except RemoteProtocolError as e:
        trickled = ("refused", e.reply)
    assert trickled == whole
    cuts = (min(len(head), HEAD_LIMIT) - 4) // (2048 - 4)
    assert len(calls) <= cuts + 1, len(calls)
