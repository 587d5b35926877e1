"""The VMess inbound (v2ray ``proxy/vmess/inbound/inbound.go``).

Handshake: the header is decoded with the user table (AEAD AuthID first, then the legacy
auth table) under level 0's handshake deadline. Any authentication failure is answered the
way 4.34 answers it: read a deterministic-plus-random number of bytes, then close, so a
prober learns nothing from timing or length. The response header goes out lazily with the
first response chunk (4.34 buffers it the same way), and an end-of-stream chunk closes the
response when the upstream finishes. Command 3 (Mux.cool) dispatches ``v1.mux.cool``, which
the inbound's dispatcher (``common.mux.server.MuxServer``) serves itself.
"""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Callable, List, Mapping

from v2sync.common.errors import (HandshakeClosed, HandshakeTimeout, ProtocolError,
                                  UserExists, UserNotFound)
from v2sync.common.registry import INBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.features.proxy import ProxyContext
from v2sync.features.routing import Dispatcher
from v2sync.proxy.relay import Parkable, run_relay_steps
from v2sync.proxy.vmess.body import BodyReader
from v2sync.proxy.vmess.config import VMessInboundConfig, parse_user
from v2sync.proxy.vmess.encoding import ServerSession
from v2sync.proxy.vmess.validator import (DrainRequired, RequestHeaderDecoder, SessionHistory,
                                          UserTable)
from v2sync.transport.copy import PipeDrain, parkable_reads, write_or_stop
from v2sync.transport.internet.conn import (Connection, GoReads, Handshake, HandshakeReader,
                                            drain)
from v2sync.transport.link import Link
from v2sync.transport.pipe import Pipe

log = logging.getLogger(__name__)

# An honest header is under 400 bytes; past this a connection is not worth reading further.
MAX_HEADER_BYTES = 4096
# 4.34 reads into 2 KiB buffers (buf.Size); whatever has arrived is taken whole.


@INBOUNDS.register("vmess")
class VMessInbound:
    # Its refusals get an access line, as 4.34's server writes one (AccessRejected).
    logs_rejected = True
    logs_empty_close = False  # 4.34 writes no line for io.EOF (a client that sent nothing)
    config_type = VMessInboundConfig

    def __init__(self, settings: VMessInboundConfig, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.users = UserTable()
        for user in settings.users:
            self.users.add(user)
        self.sessions = SessionHistory()
        self.handshake_policy = ctx.policy.for_level(0)  # inbound.go: policy for level 0

    # -- features.proxy.UserManager (the API's AlterInbound) ------------------------------
    account_protocol = "vmess"

    def add_user(self, client: Mapping[str, Any]) -> None:
        """A ``clients[]`` entry; it authenticates from the next handshake on."""
        user = parse_user(client, "user", self.settings.default_alter_id,
                          self.settings.default_level)
        if not self.users.add_unique(user):
            raise UserExists(f"User {user.email} already exists.", user.email, "user.email")

    def remove_user(self, email: str) -> None:
        """Its next handshake is refused; connections already relaying go on (as 4.34)."""
        if not self.users.remove(email):
            raise UserNotFound(f"User {email} not found.")

    def handshake(self, session: Session, conn: Connection,
                  dispatcher: Dispatcher) -> Handshake[Callable[[], object]]:
        """Decode the request header (parked in the selector); returns the rest."""
        deadline = time.monotonic() + self.handshake_policy.handshake
        reader = HandshakeReader(conn, deadline, MAX_HEADER_BYTES, GoReads.of(conn))
        decoder = RequestHeaderDecoder(self.users, self.sessions,
                                       allow_insecure=not self.settings.disable_insecure_encryption)
        try:
            server = yield from reader.parse_steps(decoder.decode)
        except DrainRequired as e:
            yield from drain(reader, e.drain_size - len(reader.buf))
            raise
        except (HandshakeClosed, HandshakeTimeout):
            decoder.truncated(reader.buf)
            raise
        session.user_email = server.user.email
        session.user_level = server.user.level
        return partial(self._serve, session, conn, dispatcher, server,
                       reader.consume(len(reader.buf)))

    def _serve(self, session: Session, conn: Connection, dispatcher: Dispatcher,
               server: ServerSession, early: bytes) -> Steps[None]:
        """Steps (``Handoff.serve_steps``): the client's reader parks while idle."""
        body_in = server.request_body_reader()
        chunks = body_in.feed(early)  # a stream's go with the dispatch; datagrams one by one
        more = not (body_in.eof or ends_at_bad_chunk(session, body_in))
        dest = server.header.destination()
        if server.header.is_packet:  # in the relay, its timer running: each may wait
            link = dispatcher.dispatch(session, dest)
        else:
            link = dispatcher.dispatch(session, dest, b"".join(chunks), start_here=True)
            chunks = []
        yield from self._relay(session, conn, link, server, body_in, chunks, more)

    def _relay(self, session: Session, conn: Connection, link: Link, server: ServerSession,
               body_in: BodyReader, datagrams: List[bytes], more: bool) -> Steps[None]:
        policy = self.ctx.policy.for_level(server.user.level)

        def abort() -> None:
            conn.abort()
            link.interrupt()

        def forward(data: bytes) -> bool:
            """Decode and hand on; False once the request direction is over."""
            if not deliver(link.writer, body_in.feed(data), server.header.is_packet):
                return False  # the outbound stopped reading
            return not (body_in.eof or ends_at_bad_chunk(session, body_in))

        def first(timer) -> None:
            nonlocal more
            more = (not datagrams or deliver(link.writer, datagrams, True)) and more

        def request(timer) -> Steps[None]:
            if more:
                timer.update()
                # Reads wait for room in the pipe: a stalled outbound stops them here.
                for data in parkable_reads(conn, link.writer, self.ctx.readiness):
                    if not isinstance(data, bytes):
                        yield data  # a Wait: idle, parked
                        continue
                    if not forward(data):
                        break
                    del data
                    timer.update()
            link.writer.close()

        head = server.encode_response_header()
        body_out = server.response_body_writer()

        def send(chunks: List[bytes]) -> None:
            nonlocal head
            out = head + b"".join([body_out.encode(chunk) for chunk in chunks])
            head = b""
            conn.write(out)

        def finish() -> None:
            conn.write(head + body_out.encode_eof())

        error = yield from run_relay_steps(self.ctx, session.name(), policy, conn, abort,
                                           Parkable(request),
                                           PipeDrain(link.reader, send, finish, conn), first)
        if error is not None:
            log.debug("%s: vmess relay ended: %s", session.name(), error)


def ends_at_bad_chunk(session: Session, body_in) -> bool:
    """Whether the body met a bad chunk: its direction then ends as at the end of the
    stream, so the chunks handed on before it still go (an abort would drop them from the
    pipe). 4.34 skips a bad chunk and reads on."""
    try:
        body_in.check()
    except ProtocolError as e:
        log.info("%s: vmess body ends at a bad chunk: %s", session.name(), e)
        return True
    return False


def deliver(pipe: Pipe, chunks: List[bytes], packet: bool) -> bool:
    """Hand decoded chunks to a pipe: datagrams one by one, a stream as one write.

    A 64 KiB read decodes into ~33 chunks of at most 1966 bytes; writing them separately
    would wake the pipe's reader 33 times. False if the pipe's reader is gone.
    """
    if packet:
        return all(write_or_stop(pipe, chunk) for chunk in chunks)
    return not chunks or write_or_stop(pipe, b"".join(chunks))
