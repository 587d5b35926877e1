"""TlsConnection over real loopback sockets: verification, ALPN, deadlines, and the thread
pair that deadlocks a plain SSLSocket (cpython#77271)."""
from __future__ import annotations

import os
import random
import socket
import ssl
import threading
import time
from typing import Callable, Dict, Iterator, Tuple

import pytest
from OpenSSL import SSL

from support.certs import make_pki
from v2sync.common.errors import ConfigError, HandshakeClosed, HandshakeTimeout, TransportError
from v2sync.common.net import Destination
from v2sync.transport.internet.config import build_tls
from v2sync.transport.internet.conn import Connection
from v2sync.transport.internet.tls import DEFAULT_ALPN, ClientTls, ServerTls, TlsConnection
from v2sync.transport.internet.tls_client import ClientEngine, client_context

TIMEOUT = 10.0
TARGET = Destination.tcp("v2sync.test", 443)


def _pair() -> Tuple[Connection, Connection]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    server.settimeout(TIMEOUT)
    return Connection(client), Connection(server)


def _handshake(server_tls: ServerTls, client_tls: ClientTls,
               target: Destination = TARGET) -> Tuple[TlsConnection, TlsConnection]:
    """Both ends' handshakes, the server's in a thread; either failure is raised."""
    raw_client, raw_server = _pair()
    result = {}

    def serve() -> None:
        try:
            result["server"] = server_tls.wrap(raw_server, time.monotonic() + TIMEOUT)
        except Exception as e:  # reported below, after the client side
            result["error"] = e
            raw_server.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        client = client_tls.wrap(raw_client, target, time.monotonic() + TIMEOUT)
    except BaseException:
        raw_client.close()
        thread.join(TIMEOUT)
        raise
    try:
        client.finish_handshake()  # a client finishes on first use; the server waits for it
    except BaseException:
        client.close()
        thread.join(TIMEOUT)
        raise
    finally:
        thread.join(TIMEOUT)
    if "error" in result:
        client.close()
        raise result["error"]
    return client, result["server"]


@pytest.fixture
def server_tls(pki) -> ServerTls:
    return ServerTls(build_tls(pki.server_tls()))


@pytest.fixture
def tls_pair(server_tls, pki) -> Iterator[Tuple[TlsConnection, TlsConnection]]:
    client, server = _handshake(server_tls, ClientTls(build_tls(pki.client_tls())))
    yield client, server
    client.close()
    server.close()


def test_verified_handshake_negotiates_default_alpn(tls_pair) -> None:
    client, server = tls_pair
    assert client.alpn == server.alpn == "h2"  # both default to ["h2", "http/1.1"]


def test_configured_alpn_wins(pki) -> None:
    server = ServerTls(build_tls(pki.server_tls(alpn=["http/1.1"])))
    client, served = _handshake(server, ClientTls(build_tls(pki.client_tls())))
    try:
        assert client.alpn == "http/1.1"
    finally:
        client.close()
        served.close()


def test_alpn_names_no_client_can_send_are_left_out_by_the_server(pki) -> None:
    """Go's server keeps them and never matches them; the ssl module refuses them."""
    odd = ["", "x" * 256, "\u00e9", "http/1.1"]
    for names, chosen in ((odd, "http/1.1"), ([""], None)):  # none left: no ALPN at all
        server = ServerTls(build_tls(pki.server_tls(alpn=names)))
        client, served = _handshake(server, ClientTls(build_tls(pki.client_tls())))
        try:
            assert client.alpn == chosen
        finally:
            client.close()
            served.close()


@pytest.mark.parametrize("name", ["", "x" * 256])
def test_an_alpn_name_a_client_cannot_offer_is_a_config_error(pki, name: str) -> None:
    """4.34 takes it and fails every dial ("tls: invalid NextProtos value")."""
    with pytest.raises(ConfigError, match="ALPN name .* cannot be offered"):
        ClientTls(build_tls(pki.client_tls(alpn=["http/1.1", name])))


def test_wrong_server_name_fails_unless_allow_insecure(server_tls, pki) -> None:
    with pytest.raises(TransportError, match="Hostname mismatch|doesn't match"):
        _handshake(server_tls, ClientTls(build_tls(pki.client_tls("wrong.test"))))
    client, served = _handshake(server_tls, ClientTls(build_tls(
        pki.client_tls("wrong.test", allowInsecure=True))))
    client.close()
    served.close()


def test_untrusted_ca_fails(server_tls) -> None:
    untrusting = ClientTls(build_tls({"serverName": "v2sync.test", "disableSystemRoot": True}))
    with pytest.raises(TransportError, match="certificate verify failed|unable to get"):
        _handshake(server_tls, untrusting)


def test_ip_destination_without_server_name_is_refused(server_tls, pki) -> None:
    settings = build_tls({"disableSystemRoot": True,
                          "certificates": [{"certificateFile": str(pki.ca_file)}]})
    raw_client, raw_server = _pair()
    try:
        with pytest.raises(TransportError, match="serverName"):
            ClientTls(settings).wrap(raw_client, Destination.tcp("127.0.0.1", 443),
                                     time.monotonic() + TIMEOUT)
    finally:
        raw_client.close()
        raw_server.close()


def test_inline_pem_lines_serve(pki) -> None:
    server = ServerTls(build_tls(pki.server_tls(inline=True)))
    client, served = _handshake(server, ClientTls(build_tls(pki.client_tls())))
    client.write(b"inline")
    assert served.read(100) == b"inline"
    client.close()
    served.close()


def test_stalled_client_is_cut_at_the_deadline(server_tls) -> None:
    raw_client, raw_server = _pair()
    try:
        raw_client.write(b"\x16\x03\x01\x00")  # half a record header, then silence
        started = time.monotonic()
        with pytest.raises(HandshakeTimeout):
            server_tls.wrap(raw_server, time.monotonic() + 0.5)
        assert time.monotonic() - started < 5.0
    finally:
        raw_client.close()
        raw_server.close()


def test_garbage_is_a_transport_error(server_tls) -> None:
    raw_client, raw_server = _pair()
    try:
        raw_client.write(b"GET / HTTP/1.1\r\n\r\n")
        with pytest.raises(TransportError, match="tls handshake"):
            server_tls.wrap(raw_server, time.monotonic() + TIMEOUT)
    finally:
        raw_client.close()
        raw_server.close()


def test_a_client_closed_before_a_byte_is_an_empty_handshake_close(server_tls) -> None:
    # Go's io.EOF: VMess, VLESS and Trojan write no access line for it
    raw_client, raw_server = _pair()
    try:
        raw_client.close()
        with pytest.raises(HandshakeClosed) as info:
            server_tls.wrap(raw_server, time.monotonic() + TIMEOUT)
        assert info.value.empty
    finally:
        raw_server.close()


def test_a_server_that_closes_at_once_is_a_transport_error_for_the_client(pki) -> None:
    # The dialer's retry (and its next server) takes TransportError, the peer named in it.
    raw_client, raw_server = _pair()
    try:
        client = ClientTls(build_tls(pki.client_tls())).wrap(
            raw_client, Destination.tcp("v2sync.test", 443), time.monotonic() + TIMEOUT)
        assert raw_server.sock.recv(65536)  # the ClientHello, read: the close is a FIN
        raw_server.close()
        with pytest.raises(TransportError, match="tls handshake with"):
            client.write(b"first use finishes the handshake")
    finally:
        raw_client.close()


def test_a_server_that_answers_plain_http_is_named_in_words(pki) -> None:
    """OpenSSL's reason reads as words in the error, not as a tuple:
    ``('wrong version number',)`` reached the log so (found by a review)."""
    raw_client, raw_server = _pair()
    try:
        client = ClientTls(build_tls(pki.client_tls())).wrap(
            raw_client, Destination.tcp("v2sync.test", 443), time.monotonic() + TIMEOUT)
        assert raw_server.sock.recv(65536)  # the ClientHello
        raw_server.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        with pytest.raises(TransportError) as info:
            client.write(b"first use finishes the handshake")
        assert str(info.value).endswith("failed: wrong version number")
    finally:
        raw_server.close()
        raw_client.close()


def test_the_client_refuses_renegotiation_as_go_does(pki) -> None:
    """Go's client ends a TLS 1.2 server's renegotiation ("tls: no renegotiation");
    OpenSSL ran a new handshake each time a server asked (found by a review)."""
    context = client_context(build_tls(pki.client_tls()), DEFAULT_ALPN)
    assert context.set_options(0) & SSL.OP_NO_RENEGOTIATION  # adding none: the options set


def _run(*targets: Callable[[], None]) -> None:
    errors = []

    def guard(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a TLS thread hung"
    assert not errors, errors


def _send(conn: TlsConnection, data: bytes) -> None:
    for offset in range(0, len(data), 60000):
        conn.write(data[offset:offset + 60000])


def _receive(conn: TlsConnection, size: int, out: list) -> None:
    parts, got = [], 0
    while got < size:
        chunk = conn.read(65536)
        assert chunk, "EOF too early"
        parts.append(chunk)
        got += len(chunk)
    out.append(b"".join(parts))


def test_full_duplex_from_four_threads(tls_pair) -> None:
    """Each end reads in one thread while writing 4 MiB in another, at the same time:
    the pattern that deadlocks one SSLSocket shared by two threads."""
    client, server = tls_pair
    for conn in tls_pair:
        conn.settimeout(None)
    up, down = os.urandom(4 << 20), os.urandom(4 << 20)
    got_up: list = []
    got_down: list = []
    _run(lambda: _send(client, up), lambda: _receive(server, len(up), got_up),
         lambda: _send(server, down), lambda: _receive(client, len(down), got_down))
    assert got_up[0] == up and got_down[0] == down


def test_gather_write_arrives_as_the_parts_joined(tls_pair) -> None:
    client, server = tls_pair
    parts = (b"\x82\x7f" + bytes(8), os.urandom(300_000), b"", b"tail")
    got: list = []
    _run(lambda: client.sendall_parts(parts),
         lambda: _receive(server, sum(map(len, parts)), got))
    assert got[0] == b"".join(parts)


def test_close_sends_close_notify_and_peer_reads_eof(tls_pair) -> None:
    client, server = tls_pair
    client.write(b"last words")
    client.close()
    assert server.read(100) == b"last words"
    assert server.read(100) == b""


def test_abort_unblocks_a_blocked_reader(tls_pair) -> None:
    client, _server = tls_pair
    client.settimeout(None)
    outcome = []

    def reader() -> None:
        try:
            outcome.append(client.read(100))
        except TransportError as e:
            outcome.append(e)

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.1)
    client.abort()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert outcome and (outcome[0] == b"" or isinstance(outcome[0], TransportError))


def test_session_tickets_off_by_default(server_tls) -> None:
    assert server_tls.context.options & ssl.OP_NO_TICKET


def _exchange_and_close(client: TlsConnection, server: TlsConnection) -> bool:
    """One byte each way (a TLS 1.3 ticket arrives with the server's first bytes); whether
    the client's handshake resumed a session."""
    server.write(b"s")
    assert client.read(10) == b"s"
    client.write(b"c")
    assert server.read(10) == b"c"
    resumed = client._tls.resumed()
    client.close()
    server.close()
    return resumed


@pytest.mark.parametrize("enabled", [True, False])
def test_a_client_resumes_only_with_enable_session_resumption(pki, enabled) -> None:
    """4.34 sets SessionTicketsDisabled unless enableSessionResumption, on both ends; with
    it, its client keeps sessions (globalSessionCache) and offers them again."""
    server_tls = ServerTls(build_tls(pki.server_tls(enableSessionResumption=enabled)))
    client_tls = ClientTls(build_tls(pki.client_tls(enableSessionResumption=enabled)))
    resumed = [_exchange_and_close(*_handshake(server_tls, client_tls)) for _ in range(4)]
    # The first dial and the one whose ClientHello was made before any ticket came are
    # full handshakes; from then on a ticket is offered and taken.
    assert resumed == ([False, False, True, True] if enabled else [False] * 4)


def test_a_client_offering_a_session_a_server_refuses_still_verifies(pki, tmp_path) -> None:
    """A server that no longer takes the ticket makes it a full handshake, verified."""
    client_tls = ClientTls(build_tls(pki.client_tls(enableSessionResumption=True)))
    first = ServerTls(build_tls(pki.server_tls(enableSessionResumption=True)))
    for _ in range(3):
        _exchange_and_close(*_handshake(first, client_tls))
    assert client_tls._sessions
    other = ServerTls(build_tls(pki.server_tls(enableSessionResumption=True)))  # new keys
    assert not _exchange_and_close(*_handshake(other, client_tls))
    stranger = make_pki(tmp_path)  # a server this client does not trust: no session helps it
    with pytest.raises(TransportError):
        _handshake(ServerTls(build_tls(stranger.server_tls(enableSessionResumption=True))),
                   client_tls)


# -- the client engine (tls_client.py): what its ClientHello offers, how names are checked --

def _client_hello(settings: dict, name: str) -> bytes:
    engine = ClientEngine(client_context(build_tls(settings), DEFAULT_ALPN), name)
    return engine.say_hello().outgoing.read()


def _hello_extensions(record: bytes) -> Dict[int, bytes]:
    """A ClientHello record's extensions by type (RFC 8446 §4.1.2), socket-free."""
    assert record[0] == 22 and record[5] == 1  # handshake record, ClientHello
    pos = 5 + 4 + 2 + 32
    pos += 1 + record[pos]                                    # legacy_session_id
    pos += 2 + int.from_bytes(record[pos:pos + 2], "big")     # cipher_suites
    pos += 1 + record[pos]                                    # compression methods
    end = pos + 2 + int.from_bytes(record[pos:pos + 2], "big")
    pos += 2
    found = {}
    while pos < end:
        kind, size = (int.from_bytes(record[pos + i:pos + i + 2], "big") for i in (0, 2))
        found[kind] = record[pos + 4:pos + 4 + size]
        pos += 4 + size
    assert pos == end == len(record)
    return found


def _u16s(data: bytes) -> list:
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


def test_client_hello_offers_go_1_15_groups_with_one_x25519_key_share(pki) -> None:
    found = _hello_extensions(_client_hello(pki.client_tls(), "v2sync.test"))
    assert _u16s(found[10][2:]) == [0x1D, 0x17, 0x18, 0x19]  # x25519, P-256, P-384, P-521
    shares = found[51][2:]
    assert _u16s(shares[:2]) == [0x1D] and len(shares) == 4 + 32  # one X25519 share only
    assert found[0][5:] == b"v2sync.test"  # SNI
    assert found[16][2:] == b"\x02h2\x08http/1.1"  # ALPN


def test_an_ip_server_name_sends_no_sni_and_is_checked_against_ip_sans(server_tls, pki) -> None:
    assert 0 not in _hello_extensions(_client_hello(pki.client_tls("127.0.0.1"), "127.0.0.1"))
    client, served = _handshake(server_tls, ClientTls(build_tls(pki.client_tls("127.0.0.1"))))
    client.close()
    served.close()
    with pytest.raises(TransportError, match="IP address mismatch"):
        _handshake(server_tls, ClientTls(build_tls(pki.client_tls("127.0.0.2"))))


def test_the_common_name_is_not_a_host_name(tmp_path) -> None:
    """Go 1.15 (v2ray 4.34) dropped the CN fallback: a name must be a subjectAltName."""
    cn_only = make_pki(tmp_path, ("v2sync.test",), dns_sans=False)
    server = ServerTls(build_tls(cn_only.server_tls()))
    with pytest.raises(TransportError, match="Hostname mismatch"):
        _handshake(server, ClientTls(build_tls(cn_only.client_tls("v2sync.test"))))


def test_a_listed_certificate_that_is_not_pem_is_refused(pki) -> None:
    settings = pki.client_tls()
    settings["certificates"] = [{"certificate": ["-----BEGIN CERTIFICATE-----", "bm90IGRFUg==",
                                                 "-----END CERTIFICATE-----"]}]
    with pytest.raises((TransportError, ConfigError), match="certificate"):
        ClientTls(build_tls(settings))


def test_client_context_gives_back_idle_record_buffers(pki) -> None:
    context = client_context(build_tls(pki.client_tls()), DEFAULT_ALPN)
    assert context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS  # set_mode returns the mode now


def test_one_large_read_gathers_several_records(tls_pair) -> None:
    client, server = tls_pair
    data = os.urandom(5 * 16 * 1024 + 100)  # six records
    server.write(data)
    got = b""
    for _ in range(len(data)):  # bounded: each read returns at least a byte
        got += client.read(1024 * 1024)
        if len(got) >= len(data):
            break
    assert got == data


# -- the client's batched reads (ClientEngine.read_batch) -------------------------------------

def _small_records(rng) -> list:
    """Parts of 1 byte to 3 KiB: each goes out as a TLS record of its own, as 4.34 sends
    every VMess chunk."""
    return [rng.randbytes(rng.choice((1, 7, 2048, 2066, 3000))) for _ in range(200)]


@pytest.mark.parametrize("read_size", [7, 1000, 16 * 1024, 1 << 20])
def test_client_reads_of_many_small_records_are_byte_identical(tls_pair, read_size) -> None:
    client, server = tls_pair
    parts = _small_records(random.Random(read_size))
    expected = b"".join(parts)
    sender = threading.Thread(target=lambda: (server.write_parts(parts), server.close()))
    sender.start()
    got = bytearray()
    try:
        while True:  # bounded: the sender closes after its last record (close_notify)
            data = client.read(read_size)
            assert len(data) <= read_size
            if not data:
                break
            got += data
    finally:
        sender.join(TIMEOUT)
    assert bytes(got) == expected



def test_a_small_read_waits_for_late_bytes_and_keeps_its_timeout(tls_pair) -> None:
    """A small read waits for bytes before it makes its buffer (an idle connection parked in
    it holds none); it still gets what arrives later, and a socket timeout still cuts it."""
    client, server = tls_pair
    client.settimeout(TIMEOUT)
    timer = threading.Timer(0.1, lambda: server.write(b"late"))
    timer.start()
    try:
        assert client.read(100) == b"late"
    finally:
        timer.join(TIMEOUT)
    client.settimeout(0.1)
    with pytest.raises(TransportError, match="timed out"):
        client.read(100)


def test_an_armed_read_takes_what_the_engine_holds_and_gives_up_on_silence(tls_pair) -> None:
    """A parking reader (``arm_read_timeout``): over both engines (the client's pyOpenSSL,
    the server's ssl module), plaintext left from a read bigger than was asked for comes at
    once; with nothing at all, the read gives up (None) after the timeout."""
    client, server = tls_pair
    for reader, writer in ((client, server), (server, client)):
        reader.settimeout(None)  # blocking, as a relay makes it
        assert reader.arm_read_timeout(0.05)
        writer.write(b"x" * 3000)  # one record
        assert reader.read(1000) == b"x" * 1000
        started = time.monotonic()
        assert reader.read_or_none(4000) == b"x" * 2000  # from the engine, not the socket
        assert reader.read_or_none(4000) is None  # nothing more: given up
        assert time.monotonic() - started >= 0.04
        writer.write(b"more")
        assert reader.read_or_none(4000) == b"more"
    server.close()  # close_notify: the end, not a timeout
    assert client.read_or_none(10) == b""


@pytest.mark.parametrize("parts", [(os.urandom(3 << 20),), tuple(os.urandom(10_000) for _ in range(200))],
                         ids=["one-part", "many-small-parts"])
def test_a_large_write_goes_out_in_slices_byte_identical(tls_pair, monkeypatch, parts) -> None:
    """Records are sent every WRITE_SLICE of plaintext, so a writer stuck on a peer that
    does not read holds at most about two slices of records, not the whole write's."""
    from v2sync.transport.internet import tls as tls_module
    sent: list = []
    original = tls_module.send_waiting

    def recording(sock, data) -> None:
        sent.append(len(data))
        original(sock, data)

    monkeypatch.setattr(tls_module, "send_waiting", recording)
    client, server = tls_pair
    got: list = []
    _run(lambda: client.sendall_parts(parts),
         lambda: _receive(server, sum(map(len, parts)), got))
    assert got[0] == b"".join(parts)
    assert max(sent) < 2 * tls_module.WRITE_SLICE + 64 * 1024  # records' overhead
