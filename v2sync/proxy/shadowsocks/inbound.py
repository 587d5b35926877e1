"""The Shadowsocks inbound (v2ray ``proxy/shadowsocks/server.go``, ``protocol.go``).

TCP: the salt and the target address are read under the user level's handshake deadline
(parked in the selector). A wrong key, or a target that does not parse, is answered as 4.34
answers it: read a per-key deterministic-plus-random number of bytes in all
(``DrainConnN``), then close, so a prober learns nothing from when the connection ends.
The response salt goes out with the first response bytes (4.34 buffers it until then);
the response ends with a TCP close, there is no end-of-stream chunk.

UDP (``network`` udp): the inbound's UDP worker (``app/proxyman/udp_worker.py``) hands
``process`` one packet connection per source; datagrams that fail to decode are dropped
without an answer, so a prober gets nothing back, let alone more than it sent.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import random
import secrets
import time
import zlib
from functools import partial
from typing import Callable, List, Optional, Tuple

from v2sync.app.dispatcher.udp import UdpSessionTable
from v2sync.app.log.access import AccessLog
from v2sync.common.errors import ProtocolError, RemoteProtocolError, TransportError
from v2sync.common.net import Destination, Network
from v2sync.common.registry import INBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.features.proxy import ProxyContext
from v2sync.features.routing import Dispatcher
from v2sync.proxy.relay import Parkable, aborted_with, run_relay_steps
from v2sync.proxy.shadowsocks.config import ShadowsocksServerConfig
from v2sync.proxy.shadowsocks.encoding import (MAX_CHUNK_PAYLOAD, SEALED_LENGTH, Account,
                                               RequestDecoder, StreamReader, StreamWriter,
                                               decode_packet, encode_packet)
from v2sync.transport.copy import PipeDrain, parkable_reads, write_or_stop
from v2sync.transport.internet.conn import (Connection, GoReads, Handshake, HandshakeReader,
                                            drain)
from v2sync.transport.link import Link

log = logging.getLogger(__name__)

# protocol.go ReadTCPSession: DrainSize = Roll(3266) + 16 + 38 + Roll(Roll(64) + 1), the
# first two rolls from Go's math/rand seeded with CRC32(HMAC-SHA256("SSBSKDF", key)).
# Go's generator is not reproduced: Python's, under the same seed, gives the same ranges,
# equally fixed per key.
DRAIN_SEED_KEY = b"SSBSKDF"
DRAIN_BASE_RANGE = 3266
DRAIN_RAND_RANGE = 64
DRAIN_FIXED = 16 + 38
# Salt, then at most the target's 259 bytes spread over as many chunks, or one chunk of
# the largest size a 4.34 reader accepts: past this the request is not worth reading.
# Queued pipe chunks smaller than this in all are joined before they are sealed; larger
# ones are sealed where they lie and leave in one gathered write.
MERGE_BELOW = 64 * 1024
MAX_HANDSHAKE_BYTES = 32 + 259 * (SEALED_LENGTH + 17) + SEALED_LENGTH + MAX_CHUNK_PAYLOAD + 16


def drain_parameters(key: bytes) -> Tuple[int, int]:
    """``(BaseDrainSize, RandDrainMax)``, fixed per key."""
    seed = zlib.crc32(hmac.digest(DRAIN_SEED_KEY, key, hashlib.sha256))
    rng = random.Random(seed)
    return rng.randrange(DRAIN_BASE_RANGE), rng.randrange(DRAIN_RAND_RANGE) + 1


@INBOUNDS.register("shadowsocks")
class ShadowsocksInbound:
    # Its refusals get an access line, as 4.34's server writes one (AccessRejected).
    logs_rejected = True
    config_type = ShadowsocksServerConfig

    def __init__(self, settings: ShadowsocksServerConfig, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.user = settings.user
        self.networks = settings.networks  # which listeners the handler opens for us
        self.account: Account = settings.user.account
        self.policy = ctx.policy.for_level(self.user.level)  # server.go: the user's level
        self._drain_base, self._drain_rand_max = drain_parameters(self.account.key)
        self.access_log = AccessLog()  # a bad datagram's rejected line (TCP's: the handler's)

    def drain_size(self) -> int:
        """4.34's ``DrainSize`` for one rejected connection (it counts the salt in it)."""
        return self._drain_base + DRAIN_FIXED + secrets.randbelow(self._drain_rand_max)

    # -- TCP -------------------------------------------------------------------------------
    def handshake(self, session: Session, conn: Connection,
                  dispatcher: Dispatcher) -> Handshake[Callable[[], object]]:
        """Salt and target (parked in the selector); returns the rest."""
        deadline = time.monotonic() + self.policy.handshake
        reader = HandshakeReader(conn, deadline, MAX_HANDSHAKE_BYTES, GoReads.of(conn))
        decoder = RequestDecoder(self.account)
        received = 0
        try:
            while True:
                yield from reader.fill_steps()
                data = reader.consume(len(reader.buf))
                received += len(data)
                parsed = decoder.feed(data)
                if parsed is not None:
                    break
                if received >= MAX_HANDSHAKE_BYTES:
                    raise RemoteProtocolError("shadowsocks: request header too large")
        except ProtocolError:  # a wrong key (AuthenticationError) or a bad target
            yield from drain(reader, self._drain_total(decoder) - received)
            raise
        address, port, rest = parsed
        session.user_email = self.user.email
        session.user_level = self.user.level
        target = Destination(address, port, Network.TCP)
        return partial(self._serve, session, conn, dispatcher, target, decoder.reader, rest)

    def _drain_total(self, decoder: RequestDecoder) -> int:
        """Bytes 4.34 would have read from the connection in all before closing it: the
        salt and what its decrypting reader consumed, then ``DrainSize`` less the salt and
        the target bytes it had parsed. For a wrong key that is ``DrainSize + 18`` (the
        sealed length that failed); for the "none" method, ``DrainSize``."""
        if not self.account.method.is_aead:
            return self.drain_size()  # the target's bytes are the wire's: they cancel out
        after_salt = decoder.reader.wire_used - decoder.reader.salt_used
        return self.drain_size() + after_salt - decoder.plain_used

    # -- UDP: one source's packet connection from the inbound's UDP worker ----------------
    def process_steps(self, session: Session, conn, dispatcher: Dispatcher) -> Steps[None]:
        """Each datagram from ``conn``'s source is decoded and sent on to its target, one
        dispatched link per target (``handlerUDPPayload`` with ``udp.Dispatcher``); the
        answers go back encoded with the address the client asked for. A datagram that does
        not decode is dropped and never answered. Steps: an idle source parks."""
        session.user_email = self.user.email
        session.user_level = self.user.level
        session.source_with_network = True  # a rejected line's source: udp:127.0.0.1:5000
        table = UdpSessionTable(dispatcher, self.ctx, session.inbound_tag, self.user.level,
                                self.user.email)  # server.go handlerUDPPayload: inbound.User
        try:
            while True:
                datagrams = yield from conn.read_steps()
                if datagrams is None:
                    return  # idle, or shutdown
                for datagram in datagrams:
                    self._datagram(session, conn, table, datagram)
        finally:
            table.close()

    def _datagram(self, session: Session, conn, table: UdpSessionTable, datagram: bytes) -> None:
        try:
            address, port, payload = decode_packet(self.account, datagram)
        except ProtocolError as e:
            # 4.34 writes a rejected line per bad datagram (handlerUDPPayload), which
            # fail2ban-style tools read as they read the TCP ones.
            log.debug("%s: dropping a bad datagram from %s: %s", session.name(), conn.remote, e)
            self.access_log.rejected(session, str(e))
            return
        table.send(conn.remote, Destination(address, port, Network.UDP), payload,
                   partial(self._answer, conn))

    def _answer(self, conn, origin: Destination, payload: bytes) -> None:
        try:
            conn.write(encode_packet(self.account, origin.address, origin.port, payload))
        except ProtocolError as e:  # 4.34's encoder would overrun its 2 KiB buffer
            log.debug("dropping an answer to %s: %s", conn.remote, e)

    def _serve(self, session: Session, conn: Connection, dispatcher: Dispatcher,
               target: Destination, body_in: StreamReader, early: bytes) -> Steps[None]:
        """Steps (``Handoff.serve_steps``): the client's reader parks while idle."""
        link = dispatcher.dispatch(session, target, early, start_here=True)
        error = yield from relay_encrypted(self.ctx, session.name(), self.policy, conn, link, body_in,
                                StreamWriter(self.account))
        if error is not None:
            log.debug("%s: shadowsocks relay ended: %s", session.name(), error)


def relay_encrypted(ctx: ProxyContext, name: str, policy, conn: Connection, link: Link,
                    body_in: StreamReader, body_out: StreamWriter, early: bytes = b"",
                    client: bool = False) -> Steps[Optional[BaseException]]:
    """Both directions of a Shadowsocks TCP stream: ``conn``'s bytes are decrypted into
    ``link.writer``, ``link.reader``'s are encrypted onto ``conn``. Used by both ends: the
    inbound's link leads to the target, the outbound's (``client``) to the client, and
    the request direction (whose end starts ``downlinkOnly``) is the one leaving that
    end's client side. Steps: the socket's reader parks while idle."""
    def abort() -> None:
        conn.abort()
        link.interrupt()

    more = True

    def first(timer) -> None:
        nonlocal more
        more = not early or write_or_stop(link.writer, early)

    def inward(timer) -> Steps[None]:
        if more and not body_in.ended:
            timer.update()
            # Reads wait for room in the pipe: a stalled reader stops them here.
            for data in parkable_reads(conn, link.writer, ctx.readiness):
                if not isinstance(data, bytes):
                    yield data  # a Wait: idle, parked
                    continue
                chunks = body_in.feed(data)
                del data
                if chunks and not write_or_stop(link.writer, b"".join(chunks)):
                    break  # the other side stopped reading
                timer.update()
                if body_in.ended:
                    break  # a zero-length chunk: 4.34's reader ends the stream there
            else:  # the peer closed
                if client and not body_in.salted:
                    # 4.34's client fails to read the server's IV, which ends the whole
                    # link at once; taken as a clean end it waited for uplinkOnly.
                    raise TransportError("shadowsocks: the server closed before its salt")
                if client and body_in.cut:
                    raise TransportError("shadowsocks: the server's answer ends mid-chunk")
        if client and body_in.failure is not None:
            # 4.34's client fails the whole link at an answer it cannot read; ended as at
            # EOF, an application that kept sending never saw its connection end, its
            # bytes going to a server whose answers could not arrive (found by a review).
            raise TransportError(f"shadowsocks: the server's answer does not open: "
                                 f"{body_in.failure}")
        if body_in.failure is not None:
            # What opened before it has gone on; the direction ends as at EOF, so the
            # answer to it still comes back (4.34 skips a bad chunk of up to 2 KiB).
            log.info("%s: the stream ends at a chunk that does not open: %s", name,
                     body_in.failure)
        link.writer.close()

    def send(chunks: List[bytes]) -> None:
        if len(chunks) > 1 and sum(map(len, chunks)) <= MERGE_BELOW:
            chunks = [b"".join(chunks)]  # many small reads: fewer, fuller chunks
        conn.write_parts(body_out.encode_parts(chunks))

    outward = PipeDrain(link.reader, send, conn=conn)

    reader = Parkable(inward)
    if client:
        with aborted_with(link, abort):
            return (yield from run_relay_steps(ctx, name, policy, conn, abort, outward, reader,
                                               first))
    return (yield from run_relay_steps(ctx, name, policy, conn, abort, reader, outward, first))

