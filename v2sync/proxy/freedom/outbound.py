"""The freedom outbound (v2ray ``proxy/freedom/freedom.go``).

TCP: resolve per ``domainStrategy``, dial with 4.34's retry schedule, relay. freedom
never half-closes upstream: when the client's side ends, the target gets ``downlinkOnly``
seconds to finish answering. UDP: an unconnected UDP socket per link (4.34's cone), one
datagram per pipe chunk.
"""
from __future__ import annotations

import errno
import logging
from typing import Any, Callable, Optional, Sequence, Tuple

from v2sync.common.errors import TransportError
from v2sync.common.net import ANY_IPV4, Address, AddressKind, Destination, Network, go_address
from v2sync.common.registry import OUTBOUNDS
from v2sync.common.session import Session
from v2sync.common.task import Steps
from v2sync.features.proxy import ProxyContext
from v2sync.proxy.freedom.config import FreedomConfig
from v2sync.proxy.relay import link_pause, relay_socket_datagrams_steps, relay_upstream_steps
from v2sync.transport.internet.dialer import Lookup, candidates, dial_with_retry
from v2sync.transport.internet.hub import StreamClient
from v2sync.transport.internet.resolve import of_strategy, resolve
from v2sync.transport.internet.counting import adder
from v2sync.transport.internet.udp import MAX_UDP_PAYLOAD, open_udp
from v2sync.transport.link import Link

log = logging.getLogger(__name__)

# v2ray: retry.ExponentialBackoff(5, 100) around the dial.
DIAL_ATTEMPTS = 5
DIAL_STEP = 0.1


def _lookup_strategy(strategy: str, source: Optional[Address]) -> str:
    """The family a UseIP* freedom looks names up in (freedom.go ``resolveIP``): IPv4 only
    for UseIPv4 or an IPv4 ``sendThrough``, else IPv6 only for UseIPv6 or an IPv6 one. A
    socket bound to one family reaches no address of the other."""
    kind = source.kind if source is not None else None
    if strategy == "AsIs":
        return strategy
    if strategy == "UseIPv4" or kind is AddressKind.IPV4:
        return "UseIPv4"
    if strategy == "UseIPv6" or kind is AddressKind.IPV6:
        return "UseIPv6"
    return strategy


def _too_large(session: Session, dest: Destination, size: int) -> None:
    """A VMess, VLESS or Trojan UDP frame may hold 65,535 bytes; no datagram can carry more
    than 65,507. Dropped: ending the link for it ended the client's whole UDP connection,
    where 4.34 cuts every datagram into 2 KiB ones and goes on (found by a review)."""
    log.info("%s: a datagram of %d bytes to %s is too large; dropped", session.name(), size,
             dest)


@OUTBOUNDS.register("freedom")
class FreedomOutbound:
    config_type = FreedomConfig
    starts_in_caller = True  # OutboundHandler.starts_here

    def __init__(self, settings: FreedomConfig, ctx: ProxyContext, handler_config):
        self.settings = settings
        self.ctx = ctx
        self.client = StreamClient.for_handler(handler_config)
        self.source = self.client.source  # UDP binds here too (sendThrough)
        self.strategy = _lookup_strategy(settings.domain_strategy, self.source)

    def process_steps(self, session: Session, link: Link) -> Steps[None]:
        """``process`` as steps: an idle TCP relay's upstream reader parks."""
        dest = self._redirected(session.destination())
        policy = self.ctx.policy.for_level(self.settings.user_level, self.settings.timeout)
        if dest.network is Network.UDP:
            yield from self._process_udp(session, self._through_chain(session, dest), link,
                                         policy, self._lookup(session, dest))
            return
        lookup = self._lookup(session, dest)
        conn = dial_with_retry(self._through_chain(session, dest), DIAL_ATTEMPTS, DIAL_STEP,
                               self.client, self.strategy, lookup, link_pause(link))
        try:
            error = yield from relay_upstream_steps(self.ctx, session.name(), policy, conn, link)
            if error is not None:
                raise TransportError(f"relay to {dest} ended: {error}") from error
        finally:
            conn.close()

    def _redirected(self, dest: Destination) -> Destination:
        """Apply ``redirect``: an empty host, or 0.0.0.0 (freedom.go's isValidAddress
        refuses AnyIP), keeps the original host; port 0 keeps the port. The host is read
        as Go's ParseAddress reads it."""
        if self.settings.redirect is None:
            return dest
        host, port = self.settings.redirect
        address = go_address(host) if host else ANY_IPV4
        if address == ANY_IPV4:
            address = dest.address
        return Destination(address, port or dest.port, dest.network)

    def _through_chain(self, session: Session, dest: Destination) -> Destination:
        """The target a ``proxySettings`` chain is asked for: under UseIP*, the built-in
        DNS's answer (its first IPv4 one, else its first, as a UDP session's; 4.34 draws
        one at random), since freedom.go resolves before it dials through its handler; the
        name as written when the DNS has no answer (``resolveIP``'s nil). Without a chain,
        ``dest`` as it is: the dial resolves it (``_lookup``)."""
        if self.client.chain is None or dest.address.is_ip:
            return dest
        lookup = self._lookup(session, dest, keep_name=True)
        found = lookup(dest.address.value) if lookup is not None else ()
        if not found:
            return dest
        best = min(found, key=lambda address: address.kind is not AddressKind.IPV4)
        return Destination(best, dest.port, dest.network)

    def _lookup(self, session: Session, dest: Destination,
                keep_name: bool = False) -> Optional[Lookup]:
        """How names are resolved, as 4.34's freedom: AsIs dials the name (the system
        resolver), whatever the router looked up. UseIP* asks the built-in DNS, reusing the
        router's answer for this very name when it has addresses of the wanted family (one
        resolution per connection; 4.34 asks again and its cache answers). A name the
        built-in DNS cannot resolve is dialled as with AsIs, as freedom.go keeps the domain
        when ``resolveIP`` finds nothing (``keep_name``: no answer at all, then)."""
        strategy = self.strategy
        dns = self.ctx.dns
        if strategy == "AsIs" or dns is None:
            return None
        reused: Sequence[Address] = ()
        if session.resolved and dest.address == session.destination().address:
            reused = of_strategy(session.resolved, strategy)

        def lookup(name: str) -> Sequence[Address]:
            if reused:
                return reused
            try:
                return dns.lookup(name, strategy)
            except TransportError as e:
                log.info("%s: failed to get IP address for domain %s: %s; dialing it as is",
                         session.name(), name, e)
                return () if keep_name else resolve(name, "AsIs", dest.port)
        return lookup

    def _udp_socket(self, dest: Destination, lookup) -> Tuple[Any, Tuple[str, int]]:
        """The socket and the address its datagrams go to; through the ``proxySettings``
        outbound, a stand-in that sends them to ``dest`` as given."""
        carried = self.client.chained_datagrams(dest)
        if carried is not None:
            return carried, (str(dest.address), dest.port)
        # Go's ResolveUDPAddr takes the first IPv4 answer where there is one (forResolve),
        # whatever order the resolver gave: getaddrinfo puts ::1 before 127.0.0.1.
        found = candidates(dest, self.strategy, lookup)
        target = min(found, key=lambda d: d.address.kind is not AddressKind.IPV4)
        sock = open_udp(target, self.source, self.client.sockopt)
        return sock, (target.address.value, target.port)

    def _process_udp(self, session: Session, dest: Destination, link: Link, policy,
                     lookup) -> Steps[None]:
        """4.34's cone: one unconnected socket per link; answers from any address go back
        to the client as the destination's (freedom.go reads with ReadFrom and drops the
        sender). Both directions park while quiet (``relay_socket_datagrams_steps``).
        The outbound's counters take each datagram, as 4.34's counting connection does."""
        sock, address = self._udp_socket(dest, lookup)
        uplink, downlink = (adder(counter) for counter in self.client.counters)

        def receive(data: bytes) -> Optional[bytes]:
            if not data or len(data) > MAX_UDP_PAYLOAD:
                return None  # see MAX_UDP_PAYLOAD
            downlink(len(data))
            return data

        try:
            yield from relay_socket_datagrams_steps(
                self.ctx, session.name(), policy, sock, link, MAX_UDP_PAYLOAD + 1,
                _udp_sender(session, dest, sock, address, uplink), receive)
        finally:
            sock.close()


def _udp_sender(session: Session, dest: Destination, sock, address: Tuple[str, int],
                counted: Callable[[int], None]) -> Callable[[bytes], bool]:
    """freedom's send of one datagram; False when the session must end."""
    def send(chunk: bytes) -> bool:
        try:
            counted(sock.sendto(chunk, address))
        except ConnectionRefusedError as e:  # ICMP unreachable, an earlier send's
            log.debug("%s: udp send to %s failed: %s", session.name(), dest, e)
        except OSError as e:
            if e.errno == errno.EMSGSIZE:
                _too_large(session, dest, len(chunk))
                return True
            # freedom.go's copy ends the link at a failed write (port 0: EINVAL), so the
            # client's connection ends now, not after connIdle.
            log.info("%s: udp send to %s failed: %s", session.name(), dest, e)
            return False
        return True
    return send
