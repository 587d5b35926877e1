"""The VMess outbound (v2ray ``proxy/vmess/outbound/outbound.go``).

Servers are used round-robin and a user is picked at random per connection; alterId 0
means the AEAD header, anything else the legacy one. The header waits up to 100 ms for the
first payload so both leave in one write (``buf.CopyOnceTimeout``). Options follow 4.34:
ChunkStream always, plus ChunkMasking for gcm/chacha/none and GlobalPadding for gcm/chacha
(``client_options`` never sets 0x08 without 0x04, which would crash a 4.34 server).
"""
from __future__ import annotations

import logging
import os
import random
import time
from typing import List, Optional

from v2sync.common.errors import RemoteProtocolError, TransportError
from v2sync.common.protocol.command import command_for
from v2sync.common.protocol.server_spec import ServerPicker
from v2sync.common.registry import OUTBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.features.proxy import ProxyContext
from v2sync.proxy.relay import Parkable, aborted_with, link_pause, run_relay_steps
from v2sync.proxy.vmess.config import VMessOutboundConfig, VMessServer
from v2sync.proxy.vmess.encoding import ClientSession, RequestHeader, client_options
from v2sync.proxy.vmess.inbound import deliver, ends_at_bad_chunk
from v2sync.proxy.vmess.ids import VMessUser, resolve_security
from v2sync.transport.copy import PipeDrain, parkable_reads, parking, read_or_park
from v2sync.transport.internet.conn import HANDSHAKE_READ_SIZE, Connection
from v2sync.transport.internet.dialer import dial_server
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.link import Link
from v2sync.transport.pipe import EOF, Chunk, ReadTimeout

log = logging.getLogger(__name__)

DIAL_ATTEMPTS = 5  # outbound.go: retry.ExponentialBackoff(5, 200)
DIAL_STEP = 0.2
FIRST_PAYLOAD_WAIT = 0.1
MAX_RESPONSE_HEADER = 4096


@OUTBOUNDS.register("vmess")
class VMessOutbound:
    config_type = VMessOutboundConfig
    starts_in_caller = True  # OutboundHandler.starts_here

    def __init__(self, settings: VMessOutboundConfig, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.client = StreamClient.for_handler(handler_config)
        self.picker: ServerPicker[VMessServer] = ServerPicker(settings.servers)

    def process_steps(self, session: Session, link: Link) -> Steps[None]:
        """``process`` as steps: the reader of the server's answer parks while idle."""
        # The dial first, as 4.34's outbound.go: the server accepts while this side builds
        # its request. Each try takes the next server (PickServer inside the retry).
        server, conn = dial_server(self.picker.pick, DIAL_ATTEMPTS, DIAL_STEP, self.client,
                                   link_pause(link))
        try:
            user = random.choice(server.users)
            header = _request_header(session, user)
            client = ClientSession(user, is_aead=False if AEAD_DISABLED else None)
            yield from self._relay(session, conn, link, client, header, user.level)
        finally:
            conn.close()

    def _relay(self, session: Session, conn: Connection, link: Link, client: ClientSession,
               header: RequestHeader, level: int) -> Steps[None]:
        policy = self.ctx.policy.for_level(level)
        waiter = self.ctx.readiness
        body_out = client.request_body_writer(header)

        def abort() -> None:
            conn.abort()
            link.interrupt()

        ended = False  # the request's end-of-stream chunk went out with the header

        def first(timer) -> None:
            nonlocal ended
            # The header first, then the wait for the payload, as 4.34 (outbound.go encodes
            # it before CopyOnceTimeout): its key derivations run while the first payload
            # is still on its way, not after it arrived.
            now = time.time()
            spare = client.user.spare_keys.take(int(now)) if client.is_aead else None
            out = client.encode_request_header(header, now, spare)
            payload = _first_payload(link)
            if payload is EOF:
                ended = True
                conn.write(out + body_out.encode_eof())
            else:
                conn.write(out + (body_out.encode(payload) if payload else b""))

        def send(chunks: List[bytes]) -> None:
            conn.write(b"".join([body_out.encode(chunk) for chunk in chunks]))

        def finish() -> None:
            if not ended:  # else the end-of-stream chunk went out with the header
                conn.write(body_out.encode_eof())

        def response(timer) -> Steps[None]:
            body_in, data = yield from self._read_response_header(conn, client, header, waiter)

            def forward(data: bytes) -> bool:
                """Decode and hand on; False once the response direction is over."""
                deliver(link.writer, body_in.feed(data), header.is_packet)
                return not (body_in.eof or ends_at_bad_chunk(session, body_in))

            if forward(data):
                # Reads wait for room in the pipe: a stalled reader stops them here.
                for data in parkable_reads(conn, link.writer, waiter):
                    if not isinstance(data, bytes):
                        yield data  # a Wait: idle, parked
                        continue
                    timer.update()
                    go_on = forward(data)
                    del data
                    if not go_on:
                        break
            link.writer.close()

        with aborted_with(link, abort):
            error = yield from run_relay_steps(self.ctx, session.name(), policy, conn, abort,
                                               PipeDrain(link.reader, send, finish, conn),
                                               Parkable(response), first)
        if error is not None:
            raise TransportError(f"vmess relay ended: {error}") from error

    @staticmethod
    def _read_response_header(conn: Connection, client: ClientSession, header: RequestHeader,
                              waiter=None):
        """The server's response header (it may wait for the first answer: a held
        connection parks here); returns the body reader and the bytes read past it."""
        buf = b""
        waiter = parking(conn, waiter)
        client.prepare_response(header)  # while the request travels, not once the answer is in
        _stock_spare(client)
        while True:
            parsed = client.decode_response_header(buf)
            if parsed is not None:
                return client.response_body_reader(header), buf[parsed[1]:]
            if len(buf) > MAX_RESPONSE_HEADER:
                raise RemoteProtocolError("vmess: response header too large")
            data = yield from read_or_park(conn, HANDSHAKE_READ_SIZE, waiter)
            if not data:
                raise RemoteProtocolError("vmess: server closed before its response header")
            buf += data


def env_flag(name: str) -> Optional[str]:
    """4.34's ``platform.NewEnvFlag``: the dotted name, else its upper-case underscored twin."""
    for key in (name, name.upper().replace(".", "_")):
        if key in os.environ:
            return os.environ[key]
    return None


# outbound.go reads these once, at start: any value of the first forces global padding
# (where chunk masking is on); "true" in the second sends the legacy header for alterId 0.
PADDING_FORCED = env_flag("v2ray.vmess.padding") is not None
AEAD_DISABLED = env_flag("v2ray.vmess.aead.disabled") == "true"


def _request_header(session: Session, user: VMessUser) -> RequestHeader:
    security = resolve_security(user.security)
    target = session.destination()
    return RequestHeader(command_for(target), security,
                         client_options(security, PADDING_FORCED), target.address, target.port)


def _stock_spare(client: ClientSession) -> None:
    """The user's next connection's request keys, made while this request travels
    (``aead.SpareKeys``): its header then costs no KDF on the way to the server."""
    if not client.is_aead:
        return
    now = time.time()
    spares = client.user.spare_keys
    if spares.wanted(int(now)):
        spares.stock(client.request_keys(now))


def _first_payload(link: Link) -> Optional[Chunk]:
    """Up to 100 ms for the first chunk; None if nothing came (the header goes alone)."""
    try:
        return link.reader.read(timeout=FIRST_PAYLOAD_WAIT)
    except ReadTimeout:
        return None
