"""SOCKS 4/4a/5 codec: every decoder fed whole, byte by byte and with trailing bytes; garbage
with the exact reply bytes; Hypothesis properties. No sockets."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from v2sync.common.errors import LocalProtocolError, ProtocolError
from v2sync.common.net import Address, AddressKind, Destination, Network
from v2sync.proxy.socks import encoding as socks
from v2sync.proxy.socks.encoding import Command, Reply
from support.codec_checks import assert_decodes as check_decodes, assert_garbage

TRAILER = b"\x05\x00TRAILING"
# v2ray writeSocks5Response(7, 0.0.0.0:0); the reply and the SOCKS4 ones below are compared with
# the running binary's in tests/scenarios/test_inbound_replies_differential.py.
REFUSAL_CMD = b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"
SOCKS4_REJECT = b"\x00\x5b\x00\x00\x00\x00\x00\x00"
V4 = Address.parse("1.2.3.4")
V6 = Address.parse("2001:db8::1")
DOMAIN = Address.parse("example.com")


def assert_decodes(parse, wire: bytes, expected) -> None:
    check_decodes(parse, wire, expected, TRAILER)


# -- version dispatch -------------------------------------------------------------------------

@pytest.mark.parametrize("first, version", [(b"\x04\x01", 4), (b"\x05\x01", 5), (b"\x05", 5)])
def test_peek_version(first, version):
    assert socks.peek_version(first) == version


def test_peek_version_needs_a_byte():
    assert socks.peek_version(b"") is None


@pytest.mark.parametrize("first", [b"\x00", b"\x03", b"\x06", b"G", b"\x16\x03\x01"])
def test_peek_version_rejects_other_versions_without_reply(first):
    assert_garbage(socks.peek_version, first, None)


# -- greeting and method selection -------------------------------------------------------------

def test_greeting():
    assert_decodes(socks.parse_greeting, b"\x05\x02\x00\x02", socks.Greeting((0, 2)))


def test_greeting_with_no_methods_parses_and_offers_nothing():
    greeting, _ = socks.parse_greeting(b"\x05\x00")
    assert greeting.methods == ()
    assert not greeting.offers(socks.METHOD_NO_AUTH)


def test_greeting_offers():
    greeting = socks.Greeting((socks.METHOD_NO_AUTH, socks.METHOD_PASSWORD))
    assert greeting.offers(socks.METHOD_PASSWORD)
    assert not greeting.offers(socks.METHOD_GSSAPI)


def test_greeting_wrong_version():
    assert_garbage(socks.parse_greeting, b"\x04\x01\x00", None)


def test_encode_greeting_round_trip():
    wire = socks.encode_greeting([socks.METHOD_NO_AUTH, socks.METHOD_PASSWORD])
    assert wire == b"\x05\x02\x00\x02"
    assert socks.parse_greeting(wire) == (socks.Greeting((0, 2)), 4)


@pytest.mark.parametrize("methods", [[], list(range(256))])
def test_encode_greeting_refuses_bad_method_counts(methods):
    with pytest.raises(LocalProtocolError):
        socks.encode_greeting(methods)


def test_method_selection_no_acceptable_bytes():
    assert socks.encode_method_selection(socks.METHOD_NO_ACCEPTABLE) == b"\x05\xff"


def test_method_selection_round_trip():
    wire = socks.encode_method_selection(socks.METHOD_PASSWORD)
    assert wire == b"\x05\x02"
    assert_decodes(socks.parse_method_selection, wire, socks.MethodSelection(2))


def test_method_selection_wrong_version():
    assert_garbage(socks.parse_method_selection, b"\x01\x00", None)


# -- RFC 1929 ---------------------------------------------------------------------------------

def test_password_auth():
    wire = b"\x01\x04user\x06secret"
    assert_decodes(socks.parse_password_auth, wire, socks.PasswordAuth("user", "secret"))


def test_password_auth_empty_fields_parse_like_v2ray():
    assert socks.parse_password_auth(b"\x01\x00\x00") == (socks.PasswordAuth("", ""), 3)


def test_password_auth_version_is_not_checked_as_in_4_34():
    # 4.34's ReadUsernamePassword skips the version byte; the credentials decide.
    auth, consumed = socks.parse_password_auth(b"\x05\x01u\x01p")
    assert (auth.username, auth.password, consumed) == ("u", "p", 5)


def test_password_auth_round_trip_keeps_non_utf8_bytes():
    wire = b"\x01\x02\xff\xfe\x03p\xc3\xa9"
    auth, _ = socks.parse_password_auth(wire)
    assert auth.password == "pé"
    assert socks.encode_password_auth(auth.username, auth.password) == wire


def test_encode_password_auth_refuses_long_fields():
    with pytest.raises(LocalProtocolError):
        socks.encode_password_auth("u" * 256, "p")


@pytest.mark.parametrize("ok, wire", [(True, b"\x01\x00"), (False, b"\x01\xff")])
def test_password_auth_reply(ok, wire):
    assert socks.encode_password_auth_reply(ok) == wire
    reply, _ = socks.parse_password_auth_reply(wire)
    assert reply.ok is ok
    assert_decodes(socks.parse_password_auth_reply, wire, socks.PasswordAuthReply(wire[1]))


def test_password_auth_reply_version_is_not_read():
    """4.34's client reads only the status byte: a server answering ``05 00`` is fine."""
    assert_decodes(socks.parse_password_auth_reply, b"\x05\x00", socks.PasswordAuthReply(0))


# -- SOCKS5 request ---------------------------------------------------------------------------

@pytest.mark.parametrize("wire, address, port", [
    (b"\x05\x01\x00\x01\x01\x02\x03\x04\x00\x50", V4, 80),
    (b"\x05\x01\x00\x04" + V6.packed() + b"\x01\xbb", V6, 443),
    (b"\x05\x01\x00\x03\x0bexample.com\x00\x35", DOMAIN, 53),
])
def test_request_address_kinds(wire, address, port):
    assert_decodes(socks.parse_request, wire, socks.Socks5Request(Command.CONNECT, address, port))


@pytest.mark.parametrize("command", list(Command))
def test_request_returns_every_defined_command(command):
    wire = socks.encode_request(command, V4, 1)
    assert socks.parse_request(wire) == (socks.Socks5Request(command, V4, 1), len(wire))


@pytest.mark.parametrize("domain, kind", [
    (b"127.0.0.1", AddressKind.IPV4), (b"[::1]", AddressKind.IPV6),
    (b"1e100.net", AddressKind.DOMAIN), (b"a_b-c.d", AddressKind.DOMAIN),
])
def test_request_domain_classified_like_v2ray(domain, kind):
    wire = b"\x05\x01\x00\x03" + bytes([len(domain)]) + domain + b"\x00\x50"
    request, _ = socks.parse_request(wire)
    assert request.address.kind is kind


def test_request_unknown_command_refused_before_the_address_arrives():
    assert_garbage(socks.parse_request, b"\x05\x09", REFUSAL_CMD)


def test_request_unknown_address_type_gets_no_reply():
    # 4.34 closes without a reply (live: tests/scenarios/test_inbound_replies_differential.py)
    assert_garbage(socks.parse_request, b"\x05\x01\x00\x02", None)


def test_request_version_is_not_checked():
    # 4.34 reads VER CMD RSV and looks at CMD only (socks/protocol.go handshake5)
    wire = b"\x04\x01\x00\x01\xc0\x00\x02\x01\x00\x50"
    assert socks.parse_request(wire) == (socks.Socks5Request(Command.CONNECT, Address.parse("192.0.2.1"), 80),
                                         len(wire))


@pytest.mark.parametrize("domain", [b"", b"bad domain", b"caf\xc3\xa9.fr", b"a/b", b"x\x00y"])
def test_request_bad_domain(domain):
    wire = b"\x05\x01\x00\x03" + bytes([len(domain)]) + domain + b"\x00\x50"
    assert_garbage(socks.parse_request, wire, None)  # 4.34: "invalid domain name", no reply


def test_request_destination_network():
    connect = socks.Socks5Request(Command.CONNECT, DOMAIN, 443)
    udp = socks.Socks5Request(Command.UDP_ASSOCIATE, V4, 0)
    assert connect.destination == Destination(DOMAIN, 443, Network.TCP)
    assert udp.destination == Destination(V4, 0, Network.UDP)


# -- SOCKS5 reply -----------------------------------------------------------------------------

def test_reply_refusal_bytes_match_v2ray():
    assert socks.encode_reply(Reply.CMD_NOT_SUPPORTED) == REFUSAL_CMD


def test_reply_codes_are_rfc1928():
    assert [int(r) for r in Reply] == list(range(9))


@pytest.mark.parametrize("address, port", [(V4, 1080), (V6, 0), (DOMAIN, 65535)])
def test_reply_round_trip(address, port):
    wire = socks.encode_reply(Reply.SUCCEEDED, address, port)
    assert wire[:3] == b"\x05\x00\x00"
    expected = socks.Socks5Reply(Reply.SUCCEEDED, address, port)
    assert_decodes(socks.parse_reply, wire, expected)
    assert expected.succeeded


def test_reply_keeps_unknown_codes():
    reply, used = socks.parse_reply(b"\x05\x42\x00\x01\x00\x00\x00\x00\x00\x00")
    assert reply.code == 0x42
    assert not reply.succeeded
    assert used == 3  # a refusal's address is not read, as 4.34's ClientHandshake


def test_refusal_is_known_by_three_bytes():
    assert_decodes(socks.parse_reply, b"\x05\x05\x00", socks.Socks5Reply(5, socks.ANY_IPV4, 0))


@pytest.mark.parametrize("version", [0, 4, 5])
def test_reply_version_is_not_read(version):
    wire = bytes([version]) + socks.encode_reply(Reply.SUCCEEDED, V4, 1080)[1:]
    assert_decodes(socks.parse_reply, wire, socks.Socks5Reply(Reply.SUCCEEDED, V4, 1080))


@pytest.mark.parametrize("address, port", [
    (Address("", AddressKind.DOMAIN), 80), (Address("a" * 256, AddressKind.DOMAIN), 80),
    (V4, -1), (V4, 65536),
])
def test_encode_address_port_refuses_invalid(address, port):
    with pytest.raises(LocalProtocolError):
        socks.encode_address_port(address, port)


def test_encode_address_port_domain_of_255_bytes():
    domain = Address("a" * 255, AddressKind.DOMAIN)
    assert socks.encode_address_port(domain, 1)[:2] == b"\x03\xff"


# -- SOCKS4 / 4a ------------------------------------------------------------------------------

def test_socks4_connect():
    wire = b"\x04\x01\x00\x50\x01\x02\x03\x04bob\x00"
    assert_decodes(socks.parse_socks4_request, wire,
                   socks.Socks4Request(Command.CONNECT, V4, 80, "bob"))


def test_socks4a_domain():
    wire = b"\x04\x01\x01\xbb\x00\x00\x00\x07\x00example.com\x00"
    assert_decodes(socks.parse_socks4_request, wire,
                   socks.Socks4Request(Command.CONNECT, DOMAIN, 443, ""))


@pytest.mark.parametrize("ip", [b"\x00\x00\x00\x00", b"\x00\x01\x02\x03"])
def test_socks4_first_ip_byte_zero_is_4a_as_in_4_34(ip):
    # 4.34's handshake4 reads a domain whenever the first byte is 0 (the spec: 0.0.0.x, x != 0).
    wire = b"\x04\x02\x00\x01" + ip + b"\x00example.com\x00"
    request, consumed = socks.parse_socks4_request(wire + b"rest")
    assert request.address == Address.parse("example.com")
    assert request.command is Command.BIND
    assert consumed == len(wire)


def test_socks4_userid_cap():
    # As 4.34's ReadUntilNull: one 2 KiB buffer, NUL included.
    ok = b"\x04\x01\x00\x50\x01\x02\x03\x04" + b"u" * socks.SOCKS4_MAX_READ + b"\x00"
    assert socks.parse_socks4_request(ok)[0].userid == "u" * socks.SOCKS4_MAX_READ
    too_long = b"\x04\x01\x00\x50\x01\x02\x03\x04" + b"u" * (socks.SOCKS4_MAX_READ + 1)
    assert socks.parse_socks4_request(too_long[:-1]) is None
    assert_garbage(socks.parse_socks4_request, too_long, SOCKS4_REJECT)


def test_socks4a_domain_cap():
    head = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00"
    assert_garbage(socks.parse_socks4_request, head + b"d" * (socks.SOCKS4_MAX_READ + 1),
                   SOCKS4_REJECT)


@pytest.mark.parametrize("domain", [b"", b"\xffbad", b"x\n2026/12/06 00:00:00 1.2.3.4:1 rejected  x",
                                    b"tab\there", b"del\x7f"])
def test_socks4a_empty_or_unprintable_domain(domain):
    # refused on purpose (4.34 takes them): they would reach the access log as they are
    wire = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + domain + b"\x00"
    assert_garbage(socks.parse_socks4_request, wire, SOCKS4_REJECT)


@pytest.mark.parametrize("domain", ["127.0.0.1", "[::1]", "bad domain", "caf\u00e9.example"])
def test_socks4a_host_is_a_name_whatever_it_holds(domain):
    # 4.34's handshake4: net.DomainAddress(domain), no IP parsing, no charset check
    wire = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + domain.encode() + b"\x00"
    assert_decodes(socks.parse_socks4_request, wire, socks.Socks4Request(
        Command.CONNECT, Address(domain, AddressKind.DOMAIN), 80, ""))


def test_socks4_unknown_command_refused_early():
    assert_garbage(socks.parse_socks4_request, b"\x04\x03", SOCKS4_REJECT)


def test_socks4_wrong_version():
    assert_garbage(socks.parse_socks4_request, b"\x05\x01", None)


@pytest.mark.parametrize("address", [V4, DOMAIN])
def test_socks4_encode_round_trip(address):
    wire = socks.encode_socks4_request(Command.CONNECT, address, 8080, "alice")
    request, consumed = socks.parse_socks4_request(wire)
    assert (request.address, request.port, request.userid, consumed) == (address, 8080, "alice",
                                                                         len(wire))
    assert request.destination == Destination(address, 8080, Network.TCP)


@pytest.mark.parametrize("address, userid", [(V6, ""), (V4, "a\x00b"), (V4, "u" * 256)])
def test_socks4_encode_refuses(address, userid):
    with pytest.raises(LocalProtocolError):
        socks.encode_socks4_request(Command.CONNECT, address, 80, userid)


def test_socks4_reply_bytes_match_v2ray():
    assert socks.encode_socks4_reply(True) == b"\x00\x5a\x00\x00\x00\x00\x00\x00"
    assert socks.encode_socks4_reply(False) == SOCKS4_REJECT


def test_socks4_reply_round_trip():
    wire = socks.encode_socks4_reply(True, 1080, V4)
    assert wire == b"\x00\x5a\x04\x38\x01\x02\x03\x04"
    assert_decodes(socks.parse_socks4_reply, wire, socks.Socks4Reply(True, 1080, V4))


def test_socks4_reply_refuses_ipv6():
    with pytest.raises(LocalProtocolError):
        socks.encode_socks4_reply(True, 0, V6)


def test_socks4_reply_wrong_version():
    assert_garbage(socks.parse_socks4_reply, b"\x04\x5a", None)


# -- UDP datagrams ----------------------------------------------------------------------------

@pytest.mark.parametrize("address", [V4, V6, DOMAIN])
@pytest.mark.parametrize("payload", [b"", b"\x00payload\xff"])
def test_udp_datagram_round_trip(address, payload):
    wire = socks.encode_udp_datagram(address, 53, payload)
    assert wire[:3] == b"\x00\x00\x00"
    assert socks.parse_udp_datagram(wire) == socks.UdpDatagram(0, address, 53, payload)


def test_udp_datagram_fragment_dropped():
    wire = b"\x00\x00\x01" + socks.encode_address_port(V4, 53) + b"x"
    assert_garbage(socks.parse_udp_datagram, wire, None)


@pytest.mark.parametrize("wire", [b"", b"\x00\x00\x00", b"\x00\x00\x00\x01\x01\x02\x03\x04\x00",
                                  b"\x00\x00\x00\x03\x05abc", b"\x00\x00\x00\x07abcd"])
def test_udp_datagram_truncated_or_bad(wire):
    assert_garbage(socks.parse_udp_datagram, wire, None)


# -- properties -------------------------------------------------------------------------------

STREAM_DECODERS = [socks.parse_greeting, socks.parse_method_selection, socks.parse_password_auth,
                   socks.parse_password_auth_reply, socks.parse_request, socks.parse_reply,
                   socks.parse_socks4_request, socks.parse_socks4_reply]


@pytest.mark.parametrize("parse", STREAM_DECODERS, ids=lambda f: f.__name__)
@given(data=st.binary(max_size=300))
def test_any_bytes_need_more_parse_or_raise_protocol_error(parse, data):
    try:
        result = parse(data)
    except ProtocolError:
        return
    if result is not None:
        _, consumed = result
        assert 0 < consumed <= len(data)
        assert parse(data[:consumed]) == result


@given(data=st.binary(max_size=300))
def test_any_datagram_parses_or_raises_protocol_error(data):
    try:
        datagram = socks.parse_udp_datagram(data)
    except ProtocolError:
        return
    assert datagram.frag == 0
    assert data.endswith(datagram.payload)


@given(data=st.binary(max_size=4))
def test_peek_version_any_bytes(data):
    try:
        version = socks.peek_version(data)
    except ProtocolError:
        assert data[0] not in (4, 5)
        return
    assert version in (None, 4, 5)


DOMAIN_TEXT = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=255).filter(
    lambda d: d[0] not in "0123456789")
ADDRESSES = st.one_of(
    st.ip_addresses(v=4).map(lambda ip: Address.parse(str(ip))),
    st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None).map(
        lambda ip: Address.parse(str(ip))),
    DOMAIN_TEXT.map(lambda d: Address(d, AddressKind.DOMAIN)),
)
PORTS = st.integers(0, 65535)


@given(command=st.sampled_from(list(Command)), address=ADDRESSES, port=PORTS)
def test_request_round_trip_property(command, address, port):
    wire = socks.encode_request(command, address, port)
    assert socks.parse_request(wire + b"tail") == (socks.Socks5Request(command, address, port),
                                                   len(wire))


@given(address=ADDRESSES, port=PORTS, payload=st.binary(max_size=64))
def test_udp_round_trip_property(address, port, payload):
    wire = socks.encode_udp_datagram(address, port, payload)
    assert socks.parse_udp_datagram(wire) == socks.UdpDatagram(0, address, port, payload)


@given(user=st.text(max_size=60), password=st.text(max_size=60))
def test_password_auth_round_trip_property(user, password):
    wire = socks.encode_password_auth(user, password)
    assert socks.parse_password_auth(wire) == (socks.PasswordAuth(user, password), len(wire))


def test_ipv4_mapped_ipv6_decodes_as_ipv4_like_v2ray():
    mapped = ipaddress.ip_address("::ffff:1.2.3.4").packed
    request, _ = socks.parse_request(b"\x05\x01\x00\x04" + mapped + b"\x00\x50")
    assert request.address == V4
