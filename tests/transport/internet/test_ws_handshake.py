"""WebSocket opening handshake: the RFC 6455 accept vector, request and response heads under
the codec contract (whole, byte by byte, trailing bytes), v2ray's 404 on a path mismatch, the
400 on a bad upgrade, the handshake bound, and a Hypothesis property."""
from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings, strategies as st

from v2sync.common.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from v2sync.transport.internet.websocket import handshake as ws
from v2sync.transport.internet.websocket.handshake import WsRequest
from support.codec_checks import assert_decodes, assert_garbage

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
TRAILER = b"\x82\x05hello"  # a first server frame right behind the head must survive
UPGRADE_HEADERS = (("host", "example.com"), ("upgrade", "websocket"), ("connection", "Upgrade"),
                   ("sec-websocket-key", RFC_KEY), ("sec-websocket-version", "13"))
REQUEST = ("GET {} HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: " + RFC_KEY + "\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n")


def request(path="/ws", method="GET", **changes) -> WsRequest:
    headers = dict(UPGRADE_HEADERS)
    headers.update({k.replace("_", "-"): v for k, v in changes.items()})
    return WsRequest(method, path, tuple((k, v) for k, v in headers.items() if v is not None))


def test_accept_token_rfc_vector():
    assert ws.accept_token(RFC_KEY) == RFC_ACCEPT


def test_new_key_is_16_random_bytes():
    keys = {ws.new_key() for _ in range(8)}
    assert len(keys) == 8
    assert all(len(base64.b64decode(k, validate=True)) == 16 for k in keys)


# -- request ----------------------------------------------------------------------------------

# As 4.34 sends it (Go's Request.Write): Host, User-Agent, then the rest sorted by name.
# tests/scenarios/test_ws_client_differential.py compares it with 4.34's on the wire.
CLIENT_REQUEST = ("GET /ws HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Go-http-client/1.1\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: " + RFC_KEY + "\r\n"
                  "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n")


def test_build_request_matches_go_layout():
    assert ws.build_request("example.com", "/ws", RFC_KEY) == CLIENT_REQUEST.encode()


def test_build_request_host_override_and_extra_headers():
    wire = ws.build_request("1.2.3.4:8080", "ws?ed=2048", RFC_KEY,
                            {"host": "cdn.example", "user-agent": "Mozilla/5.0", "zeta": "z",
                             "x-forwarded-for": "1.1.1.1", "Accept": "*/*"})
    assert wire == ("GET /ws?ed=2048 HTTP/1.1\r\nHost: cdn.example\r\n"
                    "User-Agent: Mozilla/5.0\r\nAccept: */*\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: " + RFC_KEY + "\r\nSec-WebSocket-Version: 13\r\n"
                    "Upgrade: websocket\r\nX-Forwarded-For: 1.1.1.1\r\nZeta: z\r\n\r\n").encode()


def test_an_empty_user_agent_sends_none():
    assert b"User-Agent" not in ws.build_request("h", "/", RFC_KEY, {"User-Agent": ""})


@pytest.mark.parametrize("name, canonical", [("x-lower", "X-Lower"), ("ACCEPT", "Accept"),
                                             ("sec-websocket-protocol", "Sec-Websocket-Protocol"),
                                             ("x_under", "X_under"), ("bad name", "bad name")])
def test_header_names_are_canonical_as_go_makes_them(name, canonical):
    assert ws.canonical_header(name) == canonical


@pytest.mark.parametrize("path, target", [("", "/"), ("ws", "/ws"), ("/a b", "/a%20b"),
                                          ("/a%20b", "/a%20b"), ("/é", "/%C3%A9")])
def test_build_request_normalizes_and_escapes_path(path, target):
    assert ws.build_request("h", path, RFC_KEY).startswith(f"GET {target} HTTP/1.1".encode())


@pytest.mark.parametrize("headers", [{"Upgrade": "h2c"}, {"sec-websocket-key": "x"},
                                     {"Bad Name": "x"}, {"X-Split": "a\r\nInjected: 1"}])
def test_build_request_refuses_bad_config_headers(headers):
    with pytest.raises(LocalProtocolError):
        ws.build_request("h", "/", RFC_KEY, headers)


def test_request_round_trip_under_the_codec_contract():
    wire = ws.build_request("example.com", "/ws", RFC_KEY)
    expected = request()
    expected = WsRequest(expected.method, expected.path, (
        ("host", "example.com"), ("user-agent", "Go-http-client/1.1"),
        ("connection", "Upgrade"), ("sec-websocket-key", RFC_KEY),
        ("sec-websocket-version", "13"), ("upgrade", "websocket")))
    assert_decodes(ws.parse_request, wire, expected, TRAILER)


def test_parse_request_strips_query_and_decodes_escapes():
    parsed, _ = ws.parse_request(REQUEST.format("/a%20b?ed=2048").encode())
    assert parsed.path == "/a b"
    assert parsed.header("Sec-WebSocket-Key") == RFC_KEY
    assert parsed.header("x-missing") is None
    absolute, _ = ws.parse_request(REQUEST.format("http://example.com/ws").encode())
    assert absolute.path == "/ws"


@pytest.mark.parametrize("wire", [
    b"GARBAGE\r\n\r\n",
    b"GET /ws HTTP/1.10\r\n\r\n",
    b"GET /ws HTTP/1.1 extra\r\n\r\n",
    b"GET ws HTTP/1.1\r\n\r\n",
    b"GET /a%zz HTTP/1.1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nNo colon here\r\n\r\n",
    b"GET /ws HTTP/1.1\r\n Folded: x\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
])
def test_parse_request_garbage_gets_400(wire):
    assert_garbage(ws.parse_request, wire, ws.NET_HTTP_400)


@pytest.mark.parametrize("wire, reply", [
    (b"GET /ws HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", ws.NET_HTTP_BAD_VALUE),
    (b"GET /ws HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", ws.NET_HTTP_BAD_VALUE),
    (b"GET /ws HTTP/1.1\r\nHost: x\r\nX : a\r\n\r\n", ws.NET_HTTP_BAD_NAME),
    (b"GET /ws HTTP/1.1\r\nHost: x y\r\n\r\n", ws.NET_HTTP_BAD_HOST),
    (b"GET /ws HTTP/1.1\r\nX: a\x00b\r\n\r\n", ws.NET_HTTP_NO_HOST),  # checked first
])
def test_net_http_server_checks_name_their_400(wire, reply):
    assert_garbage(ws.parse_request, wire, reply)


def test_lines_end_at_lf_and_folded_lines_join_as_textproto_reads_them():
    wire = (b"GET /ws HTTP/1.1\nHost: x\r\nX-A: b\r\n  c\n: skipped\n"
            b"Upgrade: websocket\n\ntrailing")
    for pieces in ([wire], [wire[:i] for i in range(1, len(wire) + 1)]):
        found = None
        for piece in pieces:  # fed whole, and growing a byte at a time
            found = ws.parse_request(piece)
        assert found is not None
        request, used = found
        assert wire[used:] == b"trailing"
        assert request.headers == (("host", "x"), ("x-a", "b c"), ("upgrade", "websocket"))


@pytest.mark.parametrize("wire", [b"GET /ws HTTP/2.0\r\nHost: x\r\n\r\n",
                                  b"GET /ws HTTP/0.9\r\nHost: x\r\n\r\n"])
def test_parse_request_other_major_versions_get_505(wire):
    assert_garbage(ws.parse_request, wire, ws.NET_HTTP_505)


def test_parse_request_reads_the_forms_net_http_reads():
    star, _ = ws.parse_request(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert star.path == "*"
    assert ws.answer_upgrade(star, "/ws", "D").reply == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nDate: D\r\n\r\n")
    connect, _ = ws.parse_request(b"CONNECT a:443 HTTP/1.1\r\n\r\n")  # no Host needed
    assert connect.path == "" and ws.answer_upgrade(connect, "/ws", "D").keep_alive
    preface, consumed = ws.parse_request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert consumed == 18 and not ws.answer_upgrade(preface, "/ws", "D").keep_alive
    newer, _ = ws.parse_request(REQUEST.replace("HTTP/1.1", "HTTP/1.2").format("/ws").encode())
    assert ws.answer_upgrade(newer, "/ws", "D").upgraded


def test_request_head_is_bounded_as_net_http_bounds_it():
    start = b"GET /ws HTTP/1.1\r\nHost: x\r\nX: "
    fits = start + b"a" * (ws.MAX_REQUEST_HEAD - len(start) - 4) + b"\r\n\r\n"
    assert len(fits) == ws.MAX_REQUEST_HEAD and ws.parse_request(fits) is not None
    assert ws.parse_request(fits[:-4]) is None  # more may come
    assert_garbage(ws.parse_request, fits[:-4] + b"a\r\n\r\n", ws.NET_HTTP_431)


@pytest.mark.parametrize("wire, reply", [
    (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", "NET_HTTP_NO_HOST"),
    (b"GET /ws HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "NET_HTTP_400"),
])
def test_host_is_required_once_on_http_1_1(wire, reply):
    assert_garbage(ws.parse_request, wire, getattr(ws, reply))
    assert ws.parse_request(wire.replace(b"HTTP/1.1", b"HTTP/1.0")[:-4].split(b"\r\nHost")[0]
                            + b"\r\n\r\n") is not None  # HTTP/1.0 needs none


# -- upgrade check ----------------------------------------------------------------------------
# The replies are 4.34's: tests/scenarios/test_ws_frames_differential.py compares them with
# its answers on the wire.
DATE = "Sun, 06 Dec 2026 10:00:00 GMT"
GORILLA_400 = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
               b"Sec-Websocket-Version: 13\r\nX-Content-Type-Options: nosniff\r\n"
               b"Date: " + DATE.encode() + b"\r\nContent-Length: 12\r\n\r\nBad Request\n")


def answer(req, expected="/ws"):
    return ws.answer_upgrade(req, expected, DATE)


def test_upgrade_returns_101_with_accept():
    assert answer(request()) == ws.UpgradeAnswer(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n\r\n",
        upgraded=True)


@pytest.mark.parametrize("changes", [
    dict(connection="keep-alive, UPGRADE", upgrade="WebSocket"),
    dict(sec_websocket_key="c2hvcnQ="), dict(sec_websocket_key="not base64 at all!!!!!!!"),
])
def test_upgrade_is_lenient_as_4_34s_gorilla(changes):
    assert answer(request(**changes)).upgraded


@pytest.mark.parametrize("path, expected", [("/ws2", "/ws"), ("/", "/ws"), ("/WS", "/ws"),
                                            ("/ws", "/ws?ed=2048")])
def test_path_mismatch_is_404_and_keeps_the_connection(path, expected):
    got = answer(request(path=path, method="POST"), expected)  # the path is checked first
    assert got == ws.UpgradeAnswer(b"HTTP/1.1 404 Not Found\r\nDate: " + DATE.encode()
                                   + b"\r\nContent-Length: 0\r\n\r\n", keep_alive=True)


@pytest.mark.parametrize("bad", [
    dict(connection="keep-alive"), dict(connection=None), dict(upgrade="h2c"),
    dict(sec_websocket_version="8"), dict(sec_websocket_key=None),
])
def test_bad_upgrade_is_gorillas_400(bad):
    assert answer(request(**bad)) == ws.UpgradeAnswer(GORILLA_400, keep_alive=True)


def test_a_method_other_than_get_is_405_after_the_upgrade_headers():
    got = answer(request(method="POST"))
    assert got.reply.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert got.reply.endswith(b"Content-Length: 19\r\n\r\nMethod Not Allowed\n")
    assert answer(request(method="POST", upgrade=None)).reply == GORILLA_400
    assert answer(request(method="HEAD")).reply.endswith(b"Content-Length: 19\r\n\r\n")


@pytest.mark.parametrize("version, connection, keep, line", [
    ("HTTP/1.1", "Upgrade", True, b""),
    ("HTTP/1.1", "close", False, b"Connection: close\r\n"),
    ("HTTP/1.0", "Upgrade", False, b""),
    ("HTTP/1.0", "keep-alive", True, b"Connection: keep-alive\r\n"),
])
def test_keep_alive_as_net_http(version, connection, keep, line):
    req = request(path="/other", connection=connection)
    req = ws.WsRequest(req.method, req.path, req.headers, version)
    got = answer(req)
    assert got.keep_alive is keep
    assert got.reply.endswith(b"Content-Length: 0\r\n" + line + b"\r\n")
    assert got.reply.startswith(version.encode() + b" 404 ")  # net/http answers in kind


def test_a_request_with_a_body_closes_after_the_answer():
    assert not answer(request(path="/other", content_length="5")).keep_alive


# -- response ---------------------------------------------------------------------------------

def parse_rfc_response(buf):
    return ws.parse_response(buf, RFC_KEY)


def test_response_round_trip_under_the_codec_contract():
    assert_decodes(parse_rfc_response, answer(request()).reply, 101, TRAILER)


@pytest.mark.parametrize("wire, message", [
    (ws.response_404(DATE), "websocket handshake failed: HTTP/1.1 404 Not Found"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n", "without a valid upgrade"),
    (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n\r\n", "without a valid upgrade"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "invalid status line"),
])
def test_parse_response_failures(wire, message):
    with pytest.raises(RemoteProtocolError, match=message):
        parse_rfc_response(wire)


def test_response_head_is_bounded():
    assert parse_rfc_response(b"HTTP/1.1 101 OK\r\n" + b"X" * 100) is None
    with pytest.raises(RemoteProtocolError, match="65536"):
        parse_rfc_response(b"HTTP/1.1 101 OK\r\nX: " + b"a" * ws.MAX_HANDSHAKE)


def _answer_101(*lines: bytes, end: bytes = b"\r\n") -> bytes:
    return end.join([b"HTTP/1.1 101 Switching Protocols", *lines, b"", b""])


ACCEPT_LINE = b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode()


@pytest.mark.parametrize("wire", [
    _answer_101(b"Upgrade: websocket, h2c", b"Connection: Upgrade", ACCEPT_LINE),
    _answer_101(b"Upgrade: websocket", b"Connection: keep-alive, Upgrade", ACCEPT_LINE),
    _answer_101(b"Upgrade: websocket", b"Connection: Upgrade", ACCEPT_LINE, end=b"\n"),
    _answer_101(b"Upgrade:", b" websocket", b"Connection: Upgrade", ACCEPT_LINE),  # folded
    _answer_101(b"Upgrade: websocket", b"Connection: Upgrade", ACCEPT_LINE,
                b"X-Long: " + b"a" * 9000),
])
def test_answers_gorilla_takes_are_taken(wire):
    """As Go's ReadResponse and gorilla's checks read them (found by a review)."""
    assert_decodes(parse_rfc_response, wire, 101, TRAILER)


def test_an_answer_with_compression_that_was_not_offered_is_refused():
    wire = _answer_101(b"Upgrade: websocket", b"Connection: Upgrade", ACCEPT_LINE,
                       b"Sec-WebSocket-Extensions: permessage-deflate")
    with pytest.raises(RemoteProtocolError, match="compression"):
        parse_rfc_response(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_need_more_or_raise(wire):
    for parse in (ws.parse_request, parse_rfc_response):
        try:
            result = parse(wire)
        except ProtocolError:
            continue
        assert result is None or 0 < result[1] <= len(wire)


@pytest.mark.parametrize("path, sent", [("/a#b", "/a"), ("/a?b#c", "/a?b"), ("x", "/x"),
                                        ("/a%20b?q=%zz", "/a%20b?q=%zz")])
def test_the_client_path_is_sent_as_go_parses_it(path, sent):
    assert ws.request_path(path) == sent
    assert ws.build_request("h", path, RFC_KEY).startswith(f"GET {sent} HTTP/1.1".encode())


def test_a_client_path_go_cannot_parse_is_refused():
    with pytest.raises(LocalProtocolError, match="invalid URL escape"):
        ws.request_path("/%zz")
