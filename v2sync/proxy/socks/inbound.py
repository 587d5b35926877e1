"""The SOCKS inbound (v2ray ``proxy/socks/server.go`` + ``protocol.go::ServerSession``).

Behaviour kept from 4.34:
- SOCKS4/4a only with ``auth: noauth``; SOCKS5 with ``noauth`` or ``password`` (RFC 1929).
- CONNECT is answered *before* the upstream connects; the reply carries the inbound's listen
  address and port. Tor's RESOLVE commands are treated as CONNECT; BIND is refused.
- UDP ASSOCIATE only with ``udp: true``; the reply address is ``ip`` if set, else the address
  the client reached us on. The TCP connection is then held until the client closes it.
"""
from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Callable, Optional

from v2sync.app.dispatcher.udp import UdpSessionTable
from v2sync.common.errors import AuthenticationError, RemoteProtocolError
from v2sync.common.net import ANY_IPV4, Address, Destination, Network
from v2sync.common.registry import INBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps, Wait
from v2sync.features.proxy import ProxyContext
from v2sync.features.routing import Dispatcher
from v2sync.proxy.relay import relay_stream_steps
from v2sync.proxy.socks import encoding as enc
from v2sync.proxy.socks.config import SocksServerConfig
from v2sync.transport.copy import parkable_reads
from v2sync.transport.internet.conn import Connection, Handshake, HandshakeReader, try_write

log = logging.getLogger(__name__)

MAX_HANDSHAKE_BYTES = 16 * 1024
_TCP_COMMANDS = (enc.Command.CONNECT, enc.Command.TOR_RESOLVE, enc.Command.TOR_RESOLVE_PTR)


@INBOUNDS.register("socks")
class SocksInbound:
    # Its refusals get an access line, as 4.34's server writes one (AccessRejected).
    logs_rejected = True
    source_with_network = True  # socks/server.go logs inbound.Source: tcp:127.0.0.1:5000
    config_type = SocksServerConfig

    def __init__(self, settings: SocksServerConfig, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.wants_udp = settings.udp
        self.listen = Address.parse(handler_config.listen) if handler_config.listen else None
        self.policy = ctx.policy.for_level(settings.user_level, settings.timeout)
        self._udp_table: Optional[UdpSessionTable] = None
        self._udp_lock = threading.Lock()

    # -- TCP -------------------------------------------------------------------------
    def handshake(self, session: Session, conn: Connection,
                  dispatcher: Dispatcher) -> Handshake[Callable[[], object]]:
        """The greeting, auth and request (parked in the selector); returns the rest."""
        session.user_level = self.settings.user_level
        deadline = time.monotonic() + self.policy.handshake
        reader = HandshakeReader(conn, deadline, MAX_HANDSHAKE_BYTES)
        try:
            request = yield from self._handshake(reader, conn, session)
        except RemoteProtocolError as e:
            if e.reply:
                try_write(conn, e.reply)
            raise
        if request.command is enc.Command.UDP_ASSOCIATE:
            return partial(self._hold_udp_association, conn)
        return partial(self._relay, session, conn, dispatcher, request.destination,
                       bytes(reader.buf))

    def _handshake(self, reader: HandshakeReader, conn: Connection, session: Session):
        version = yield from reader.parse_steps(
            lambda buf: (enc.peek_version(buf), 0) if buf else None)
        if version == 4:
            return (yield from self._handshake4(reader, conn))
        return (yield from self._handshake5(reader, conn, session))

    def _handshake4(self, reader: HandshakeReader, conn: Connection):
        request = yield from reader.parse_steps(enc.parse_socks4_request)
        if self.settings.auth == "password":
            raise RemoteProtocolError("socks 4 is not allowed when auth is required",
                                      reply=enc.encode_socks4_reply(False))
        if request.command is not enc.Command.CONNECT:
            raise RemoteProtocolError(f"unsupported socks 4 command {request.command.name}",
                                      reply=enc.encode_socks4_reply(False))
        conn.write(enc.encode_socks4_reply(True))
        return request

    def _handshake5(self, reader: HandshakeReader, conn: Connection, session: Session):
        greeting = yield from reader.parse_steps(enc.parse_greeting)
        method = enc.METHOD_PASSWORD if self.settings.auth == "password" else enc.METHOD_NO_AUTH
        if not greeting.offers(method):
            raise RemoteProtocolError("no matching auth method",
                                      reply=enc.encode_method_selection(enc.METHOD_NO_ACCEPTABLE))
        conn.write(enc.encode_method_selection(method))
        if method == enc.METHOD_PASSWORD:
            auth = yield from reader.parse_steps(enc.parse_password_auth)
            self._check_password(auth, conn)
            # The user name is the session's email, which routing's "user" matches
            # (socks/protocol.go in 4.34: request.User = MemoryUser{Email: username}).
            session.user_email, session.email_in_access_log = auth.username, False
        request = yield from reader.parse_steps(enc.parse_request)
        return self._answer_request(request, conn)

    def _check_password(self, auth: enc.PasswordAuth, conn: Connection) -> None:
        if self.settings.accounts.get(auth.username) != auth.password:
            conn.write(enc.encode_password_auth_reply(False))
            raise AuthenticationError(f"invalid socks user {auth.username!r}")
        conn.write(enc.encode_password_auth_reply(True))

    def _answer_request(self, request: enc.Socks5Request, conn: Connection):
        if request.command is enc.Command.UDP_ASSOCIATE:
            if not self.settings.udp:
                raise RemoteProtocolError("UDP is not enabled on this inbound",
                                          reply=enc.encode_reply(enc.Reply.CMD_NOT_SUPPORTED))
            conn.write(enc.encode_reply(enc.Reply.SUCCEEDED, self._udp_reply_address(conn),
                                        conn.local.port))
            return request
        if request.command not in _TCP_COMMANDS:
            raise RemoteProtocolError(f"unsupported socks command {request.command.name}",
                                      reply=enc.encode_reply(enc.Reply.CMD_NOT_SUPPORTED))
        conn.write(enc.encode_reply(enc.Reply.SUCCEEDED, self._bound_address(), conn.local.port))
        return request

    def _bound_address(self) -> Address:
        """The CONNECT reply's address: the listen address, as 4.34's (``::`` stays IPv6)."""
        return self.listen if self.listen is not None else ANY_IPV4

    def _udp_reply_address(self, conn: Connection) -> Address:
        if self.settings.ip:
            return Address.parse(self.settings.ip)
        if self.listen is None or self.listen.value in ("0.0.0.0", "::"):
            return conn.local.address  # where this client reached us, so its datagrams do too
        return self.listen

    def _relay(self, session: Session, conn: Connection, dispatcher: Dispatcher,
               dest: Destination, early: bytes) -> Steps[None]:
        """Steps (``Handoff.serve_steps``): the client's reader parks while idle."""
        link = dispatcher.dispatch(session, dest, early, start_here=True)
        error = yield from relay_stream_steps(self.ctx, session.name(), self.policy, conn, link)
        if error is not None:
            log.debug("%s: relay ended: %s", session.name(), error)

    def _hold_udp_association(self, conn: Connection) -> Steps[None]:
        """v2ray keeps the control connection until the client closes it (or shutdown
        aborts). Steps: its reader parks, so a held association keeps no thread."""
        conn.settimeout(None)
        for data in parkable_reads(conn, None, self.ctx.readiness):
            if isinstance(data, Wait):
                yield data

    # -- UDP -------------------------------------------------------------------------
    def process_datagram(self, handler, data: bytes, source: Destination, send_to) -> None:
        try:
            datagram = enc.parse_udp_datagram(data)
        except RemoteProtocolError as e:
            log.info("dropping a bad socks datagram from %s: %s", source, e)
            return
        if not datagram.payload:
            return  # 4.34 drops an empty one (handleUDPPayload: payload.IsEmpty)
        with self._udp_lock:  # one UDP listener thread per port may race to create it
            table = self._udp_table
            if table is None:
                table = self._udp_table = UdpSessionTable(handler.dispatcher, self.ctx,
                                                          handler.tag, self.settings.user_level, "")
        dest = Destination(datagram.address, datagram.port, Network.UDP)

        def respond(origin: Destination, payload: bytes) -> None:
            send_to(enc.encode_udp_datagram(origin.address, origin.port, payload), source)

        table.send(source, dest, datagram.payload, respond)

    def close(self) -> None:
        if self._udp_table is not None:
            self._udp_table.close()

