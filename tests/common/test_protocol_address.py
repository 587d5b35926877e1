"""The shared (address, port) codec: both layouts, fed whole, byte by byte, with trailers."""
import pytest
from hypothesis import given, strategies as st

from v2sync.common.cursor import Cursor, NeedMore
from v2sync.common.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from v2sync.common.net import Address
from v2sync.common.protocol.address import PORT_FIRST, SOCKS, AddressLayout
from tests.support.codec_checks import assert_decodes

CASES = [
    # layout, address, port, wire
    (SOCKS, "1.2.3.4", 443, "01" "01020304" "01bb"),
    (SOCKS, "::1", 80, "04" + "00" * 15 + "01" "0050"),
    (SOCKS, "example.com", 53, "03" "0b" + b"example.com".hex() + "0035"),
    (PORT_FIRST, "1.2.3.4", 443, "01bb" "01" "01020304"),
    (PORT_FIRST, "::1", 80, "0050" "03" + "00" * 15 + "01"),
    (PORT_FIRST, "example.com", 53, "0035" "02" "0b" + b"example.com".hex()),
]


def _parser(layout: AddressLayout):
    def parse(buf: bytes):
        cur = Cursor(buf)
        try:
            return layout.read(cur), cur.pos
        except NeedMore:
            return None
    return parse


@pytest.mark.parametrize("layout,text,port,wire", CASES)
def test_round_trip(layout, text, port, wire):
    address = Address.parse(text)
    assert layout.encode(address, port).hex() == wire
    assert_decodes(_parser(layout), bytes.fromhex(wire), (address, port), b"\x00tail")


@pytest.mark.parametrize("layout,domain_type", [(SOCKS, 3), (PORT_FIRST, 2)])
def test_domain_spelling_an_ip_is_read_as_that_ip(layout, domain_type):
    field = bytes([domain_type, 7]) + b"1.2.3.4"
    wire = field + b"\x00\x50" if layout is SOCKS else b"\x00\x50" + field
    assert _parser(layout)(wire) == ((Address.parse("1.2.3.4"), 80), len(wire))


@pytest.mark.parametrize("wire,what", [
    (b"\x05\x00\x50", "unknown address type 5"),
    (b"\x03\x00\x00\x50", "empty domain"),
    (b"\x03\x03a b\x00\x50", "invalid domain"),
])
def test_garbage_carries_the_reply_asked_for(wire, what):
    with pytest.raises(RemoteProtocolError, match=what) as info:
        SOCKS.read(Cursor(wire), bad_type=b"T", bad_address=b"A")
    assert info.value.reply == (b"T" if "type" in what else b"A")


def test_unsendable_values_are_the_callers_error():
    with pytest.raises(LocalProtocolError):
        SOCKS.encode(Address.parse("a" * 256), 1)
    with pytest.raises(LocalProtocolError):
        PORT_FIRST.encode(Address.parse("1.2.3.4"), 65536)


@given(st.binary(max_size=40), st.sampled_from([SOCKS, PORT_FIRST]))
def test_any_input_parses_needs_more_or_raises(data, layout):
    try:
        _parser(layout)(data)
    except ProtocolError:
        pass
