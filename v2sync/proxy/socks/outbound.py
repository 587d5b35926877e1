"""The SOCKS outbound (v2ray ``proxy/socks/client.go``, ``protocol.go::ClientHandshake``).

SOCKS5 only, as 4.34: the greeting offers one method, username/password when the picked
server has users (the credentials are sent in the same write as the greeting, as 4.34
does), no-auth otherwise. TCP links send CONNECT; UDP links send UDP ASSOCIATE for the
target and then exchange RFC 1928 datagrams with the relay address the server answered
(its own address when it answers 0.0.0.0 or ::), holding the TCP connection open
meanwhile. The handshake runs under the user level's handshake timeout; the connection
goes through the outbound's ``streamSettings`` (TLS, WebSocket ...), the UDP relay is
plain UDP, as 4.34's dialer makes it.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

from v2sync.common.errors import (AuthenticationError, RemoteProtocolError,
                                  ServerHandshakeError, TransportError, V2SyncError)
from v2sync.common.net import Address, Destination, Network
from v2sync.common.protocol.server_spec import Account, ServerPicker, ServersConfig
from v2sync.common.registry import OUTBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.features.proxy import ProxyContext
from v2sync.proxy.relay import (link_pause, relay_socket_datagrams_steps, relay_upstream_steps,
                               setup_aborted_with)
from v2sync.proxy.socks import encoding as enc
from v2sync.transport.internet.conn import Connection, HandshakeReader
from v2sync.transport.internet.counting import adder
from v2sync.transport.internet.dialer import candidates, dial_server
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.internet.udp import MAX_DATAGRAM, dial_udp
from v2sync.transport.link import Link

log = logging.getLogger(__name__)

DIAL_ATTEMPTS = 5  # client.go: retry.ExponentialBackoff(5, 100)
DIAL_STEP = 0.1
MAX_REPLY_BYTES = 1024  # a reply is at most 262 bytes
_UNSPECIFIED = (Address.parse("0.0.0.0"), Address.parse("::"))


@OUTBOUNDS.register("socks")
class SocksOutbound:
    config_type = ServersConfig
    starts_in_caller = True  # OutboundHandler.starts_here

    def __init__(self, settings: ServersConfig, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.client = StreamClient.for_handler(handler_config)
        self.picker = ServerPicker(settings.servers)

    def process_steps(self, session: Session, link: Link) -> Steps[None]:
        """``process`` as steps: an idle TCP relay's upstream reader parks."""
        # Each try takes the next server, as client.go calls PickServer inside its retry;
        # giving up is Info there (no AtWarning, unlike VMess's or Trojan's), so not
        # NoServerReachable.
        server, conn = dial_server(self.picker.pick, DIAL_ATTEMPTS, DIAL_STEP, self.client,
                                   link_pause(link), failure=TransportError)
        user = server.pick_user()
        policy = self.ctx.policy.for_level(user.level if user else 0)
        try:
            with setup_aborted_with(link, conn):  # a shutdown reaches a server yet to answer
                deadline = time.monotonic() + policy.handshake
                conn.cap_handshake(deadline)  # client.go: conn.SetDeadline before it writes
                reader = HandshakeReader(conn, deadline, MAX_REPLY_BYTES)
                reply = _handshake(conn, reader, session.destination(), user)
            if session.destination().network is Network.UDP:
                relay = Destination(server.address if reply.address in _UNSPECIFIED
                                    else reply.address, reply.port, Network.UDP)
                error = yield from self._relay_udp(session, conn, link, policy, relay)
            else:
                error = yield from relay_upstream_steps(self.ctx, session.name(), policy, conn,
                                                        link, reader.consume(len(reader.buf)))
            if error is not None:
                raise TransportError(f"socks relay ended: {error}") from error
        finally:
            conn.close()

    def _relay_udp(self, session: Session, conn: Connection, link: Link, policy,
                   relay: Destination) -> Steps[Optional[BaseException]]:
        """Each datagram with its SOCKS header to the server's relay; both directions park
        while quiet (``relay_socket_datagrams_steps``); an abort ends the control
        connection too. Each datagram, its SOCKS header included, counts on the
        outbound's counters: 4.34's dialer wraps the relay's UDP connection as it wraps
        TCP ones."""
        target = session.destination()
        sock = (self.client.chained_datagrams(relay)
                or dial_udp(candidates(relay)[0], self.client.source, self.client.sockopt))
        uplink, downlink = (adder(counter) for counter in self.client.counters)
        name = session.name()

        def send(chunk: bytes) -> bool:
            try:
                uplink(sock.send(enc.encode_udp_datagram(target.address, target.port, chunk)))
            except OSError as e:
                log.debug("%s: udp send to %s failed: %s", name, relay, e)
            return True

        def receive(data: bytes) -> Optional[bytes]:
            downlink(len(data))
            try:
                return enc.parse_udp_datagram(data).payload
            except RemoteProtocolError as e:
                log.debug("%s: bad datagram from %s: %s", name, relay, e)
                return None

        try:
            return (yield from relay_socket_datagrams_steps(
                self.ctx, name, policy, sock, link, MAX_DATAGRAM, send, receive, conn.abort))
        finally:
            sock.close()


def _handshake(conn: Connection, reader: HandshakeReader, target: Destination,
               user: Optional[Account]) -> enc.Socks5Reply:
    """``client_handshake``, its failures logged at Warning as 4.34's client.go marks them
    ("failed to establish connection to server")."""
    try:
        return client_handshake(conn, reader, target, user)
    except ServerHandshakeError:
        raise
    except V2SyncError as e:
        raise ServerHandshakeError(f"failed to establish connection to server: {e}") from e


def client_handshake(conn: Connection, reader: HandshakeReader, target: Destination,
                     user: Optional[Account] = None) -> enc.Socks5Reply:
    """Greeting (and credentials), request, reply; raises on any refusal."""
    method = enc.METHOD_PASSWORD if user is not None else enc.METHOD_NO_AUTH
    first = enc.encode_greeting([method])
    if user is not None:
        first += enc.encode_password_auth(user.user, user.password)
    conn.write(first)
    selection = reader.parse(enc.parse_method_selection)
    if selection.method != method:
        raise AuthenticationError("socks: auth method not supported by the server")
    if user is not None and not reader.parse(enc.parse_password_auth_reply).ok:
        raise AuthenticationError("socks: the server rejects the account")
    command = (enc.Command.UDP_ASSOCIATE if target.network is Network.UDP
               else enc.Command.CONNECT)
    conn.write(enc.encode_request(command, target.address, target.port))
    reply = reader.parse(enc.parse_reply)
    if not reply.succeeded:
        raise RemoteProtocolError(f"socks: the server rejects the request: {reply.code}")
    return reply
