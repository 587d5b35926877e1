"""The built-in DNS's queries through the dispatcher (v2ray ``app/dns/nameserver_udp.go``,
which sends them through ``udp.Dispatcher``): each exchange's datagrams become one UDP link,
routed like any other flow with ``dns.tag`` as its inbound tag, so a rule on that tag, or
else the default outbound, carries them (a proxy as the first outbound sends them through
the proxy, as 4.34 does). A link carries one datagram per pipe chunk, both ways.
"""
from __future__ import annotations

from typing import Optional

from v2sync.app.dns.client import DatagramChannel, Dial
from v2sync.common.errors import TransportError
from v2sync.common.net import ANY_IPV4, Address, Destination, Network
from v2sync.common.session import Session
from v2sync.features.routing import Dispatcher
from v2sync.transport.internet.resolve import resolve
from v2sync.transport.link import Link
from v2sync.transport.pipe import EOF, ReadTimeout


class RoutedChannel:
    def __init__(self, link: Link):
        self.link = link

    def send(self, data: bytes) -> None:
        self.link.writer.write(data)

    def recv(self, timeout: float) -> Optional[bytes]:
        try:
            chunk = self.link.reader.read(timeout=timeout)
        except ReadTimeout:
            return None
        if chunk is EOF:
            raise TransportError("the route to the DNS server ended")
        return chunk

    def close(self) -> None:
        self.link.interrupt()  # the outbound's UDP relay ends with it


def routed_dial(dispatcher: Dispatcher, tag: str) -> Dial:
    """Channels through ``dispatcher``, tagged ``tag`` (``dns.tag``; may be empty). A server
    given by name is resolved by the system first: routed as a name, an IPOnDemand router
    would ask the built-in DNS for it, and so itself."""
    def dial(host: str, port: int) -> DatagramChannel:
        address = Address.parse(host)
        if address.is_domain:
            address = resolve(host)[0]
        session = Session(inbound_tag=tag, source=Destination(ANY_IPV4, 0), internal=True)
        return RoutedChannel(dispatcher.dispatch(session, Destination(address, port,
                                                                      Network.UDP)))
    return dial
