"""Differential routing: one config, the same requests, through the real v2ray 4.34 and v2sync.

Every outbound of a differential config is a freedom whose ``redirect`` sends whatever it
carries to its own sink, an in-test TCP server that speaks first with its tag on one line;
``block`` is a blackhole answering 403. So the chosen outbound is read off the bytes that come
back, in both proxies the same way, and no test ever trusts a route the proxy reports about
itself. A test compares the two answers; it never compares with a tag written down by hand.

Both proxies read the same config (their inbound ports aside), the same geo .dat files
(``tools/geodata_vectors.py``, an encoder v2sync did not write) and, where names must be
resolved, the same dnsmasq (tests/support/dnsmasq.py). ``RoutedPair`` starts one v2ray and
one v2sync for a whole test module.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import random
import shutil
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from scenarios.helpers_scenarios import (BLACKHOLE_403, CMD_CONNECT, CMD_UDP, REPLY_SUCCEEDED,
                                         SOCKS4_GRANTED, read_socks5_reply, recv_exact,
                                         socks4_request, socks5_address, socks5_greet,
                                         socks5_request)
from support.peers import TcpEchoServer, free_port
from support.procs import ConfigProcess, V2RayProcess, V2SyncProcess

from v2sync.app.router.geodata import ASSET_ENV_NAMES

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
GEO_VECTORS = ("geoip-test.dat", "geosite-test.dat")
BLOCK = "block"
CLOSED = "(closed)"           # the connection ended with nothing: no outbound answered
NO_REPLY = "(no reply)"       # a UDP datagram got no answer within UDP_WAIT
ANSWER_TIMEOUT = 5.0
UDP_WAIT = 1.5
LINE_LIMIT = 256
# A proxy may keep its upstream connection to a sink open after the client left (v2ray until
# its idle timeouts), so a sink that many requests reach needs room for all of them.
SINK_CONNECTIONS = 512
UDP_POLL = 0.05
UDP_MAX_TURNS = 20_000  # polls: about 1,000 s at most
UDP_DATAGRAM = 2048
JOIN_SECONDS = 5.0


def asset_dir(path: Path) -> Path:
    """``path`` holding the vectors as geoip.dat/geosite.dat and under their own names (ext:)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in GEO_VECTORS:
        shutil.copy(VECTORS / name, path / name)
        shutil.copy(VECTORS / name, path / name.replace("-test", ""))
    return path


def asset_env(assets: Path) -> Dict[str, str]:
    """Both proxies read their .dat files from ``assets`` and nowhere else."""
    return {name: str(assets) for name in ASSET_ENV_NAMES}


class TagSink(TcpEchoServer):
    """Writes ``<tag>\\n`` on accept; whatever the client then sends is echoed."""

    def __init__(self, tag: str, host: str = "127.0.0.1"):
        super().__init__(host=host, send_first=tag.encode() + b"\n",
                         max_connections=SINK_CONNECTIONS, timeout=ANSWER_TIMEOUT)
        self.tag = tag


def freedom_to(tag: str, port: int) -> Dict[str, Any]:
    return {"tag": tag, "protocol": "freedom", "settings": {"redirect": f"127.0.0.1:{port}"}}


def blackhole_403(tag: str = BLOCK) -> Dict[str, Any]:
    return {"tag": tag, "protocol": "blackhole", "settings": {"response": {"type": "http"}}}


@dataclass(frozen=True)
class Request:
    """One routed request: SOCKS5 CONNECT (or a UDP datagram) to ``host:port`` through the
    inbound tagged ``inbound``, from ``source`` (an address, and a port if not 0), sending
    ``payload`` first (what a sniffer sees), as ``user`` (SOCKS5 password or Basic auth)."""

    inbound: str
    host: str
    port: int = 80
    payload: bytes = b""
    source: Tuple[str, int] = ("127.0.0.1", 0)
    user: Optional[Tuple[str, str]] = None
    udp: bool = False
    http: bool = False  # an HTTP CONNECT (Basic auth with ``user``) instead of SOCKS5
    domain_atyp: bool = False  # send ``host`` (even an IP literal) as a SOCKS5 domain name
    socks4a: bool = False  # a SOCKS4a CONNECT naming ``host`` (even an IP literal)


class RoutedPair:
    """The real v2ray and v2sync running one config; ``route(request)`` -> (v2ray's, v2sync's).

    ``inbounds`` are inbound objects with ``port`` left out (each proxy gets its own free
    ports); ``outbound_tags`` become freedom outbounds to their own sinks (the first one is
    the default route), then ``extra_outbounds`` as given, and a blackhole tagged ``block``
    comes last. ``udp_tags`` also get a
    UDP echo server on their sink's port number, so a datagram routed there comes back.
    """

    def __init__(self, inbounds: Sequence[Mapping[str, Any]], outbound_tags: Sequence[str],
                 routing: Mapping[str, Any], *, assets: Path, dns: Optional[Mapping[str, Any]] = None,
                 udp_tags: Sequence[str] = (), extra_outbounds: Sequence[Mapping[str, Any]] = (),
                 v2ray_bin: str = "v2ray"):
        self.inbounds = [dict(i) for i in inbounds]
        self.outbound_tags = list(outbound_tags)
        self.routing = copy.deepcopy(dict(routing))
        self.dns = copy.deepcopy(dict(dns)) if dns is not None else None
        self.assets = assets
        self.udp_tags = list(udp_tags)
        self.extra_outbounds = [copy.deepcopy(dict(o)) for o in extra_outbounds]
        self.v2ray_bin = v2ray_bin
        self.sinks: Dict[str, TagSink] = {}
        self.udp_sinks: Dict[str, UdpTagSink] = {}
        self.ports: Dict[str, Dict[str, int]] = {}
        self.processes: Dict[str, ConfigProcess] = {}

    def config(self, ports: Mapping[str, int]) -> Dict[str, Any]:
        inbounds = [{**inbound, "listen": "127.0.0.1", "port": ports[inbound["tag"]]}
                    for inbound in self.inbounds]
        outbounds = [freedom_to(tag, self.sinks[tag].port) for tag in self.outbound_tags]
        outbounds.extend(copy.deepcopy(self.extra_outbounds))
        outbounds.append(blackhole_403())
        config: Dict[str, Any] = {"log": {"loglevel": "warning", "access": "none"}, "inbounds": inbounds,
                                  "outbounds": outbounds, "routing": copy.deepcopy(self.routing)}
        if self.dns is not None:
            config["dns"] = copy.deepcopy(self.dns)
        return config

    def start(self) -> "RoutedPair":
        for tag in self.outbound_tags:
            self.sinks[tag] = TagSink(tag)
            self.sinks[tag].start()
        for tag in self.udp_tags:
            self.udp_sinks[tag] = UdpTagSink(tag, self.sinks[tag].port)
        env = asset_env(self.assets)
        for name, kind in (("v2ray", V2RayProcess), ("v2sync", V2SyncProcess)):
            self.ports[name] = {inbound["tag"]: free_port() for inbound in self.inbounds}
            extra = {"binary": self.v2ray_bin} if kind is V2RayProcess else {}
            process = kind(self.config(self.ports[name]), env=env, **extra)
            self.processes[name] = process
            process.start()
        return self

    def close(self) -> None:
        errors = []
        for process in self.processes.values():
            try:
                process.stop()
            except AssertionError as error:
                errors.append(str(error))
        for server in [*self.udp_sinks.values(), *self.sinks.values()]:
            server.close()
        if errors:
            raise AssertionError("\n\n".join(errors))

    def __enter__(self) -> "RoutedPair":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------
    def route_via(self, name: str, request: Request) -> str:
        port = self.ports[name][request.inbound]
        if request.udp:
            return udp_route(port, request)
        if request.http:
            return http_connect_route(port, request)
        return tcp_route(port, request)

    def route(self, request: Request) -> Tuple[str, str]:
        """The outbound each proxy chose for ``request``: (v2ray's, v2sync's)."""
        return self.route_via("v2ray", request), self.route_via("v2sync", request)

    def logs(self) -> str:
        return "\n".join(f"--- {name} log:\n{p.log_tail(1500)}" for name, p in self.processes.items())


class UdpTagSink:
    """Answers every datagram on 127.0.0.1:``port`` (the TCP sink's number) with its tag."""

    def __init__(self, tag: str, port: int):
        self.tag = tag
        self.port = port
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind(("127.0.0.1", port))
            self._sock.settimeout(UDP_POLL)
        except OSError:
            self._sock.close()
            raise
        self._thread = threading.Thread(target=self._serve, name=f"udp-sink-{tag}")
        self._thread.start()

    def _serve(self) -> None:
        for _ in range(UDP_MAX_TURNS):
            if self._stop.is_set():
                return
            try:
                _, peer = self._sock.recvfrom(UDP_DATAGRAM)
            except socket.timeout:
                continue
            self._sock.sendto(self.tag.encode(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(JOIN_SECONDS)
        self._sock.close()


@contextlib.contextmanager
def _client(port: int, source: Tuple[str, int]) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(ANSWER_TIMEOUT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(source)
        sock.connect(("127.0.0.1", port))
        yield sock
    finally:
        sock.close()


def _answer(sock: socket.socket) -> str:
    """The sink's tag line, ``block`` for the blackhole's 403, CLOSED for nothing at all."""
    data = b""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while b"\n" not in data and len(data) < LINE_LIMIT and time.monotonic() < deadline:
        try:
            chunk = sock.recv(LINE_LIMIT)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    if data.startswith(BLACKHOLE_403[:12]):
        return BLOCK
    if not data:
        return CLOSED
    return data.split(b"\n", 1)[0].decode("ascii", "replace")


def tcp_route(proxy_port: int, request: Request) -> str:
    with _client(proxy_port, request.source) as sock:
        if request.socks4a:
            sock.sendall(socks4_request("", request.port, domain=request.host))
            reply = recv_exact(sock, 8)
            if reply[1] != SOCKS4_GRANTED:
                return f"(socks4 reply {reply[1]})"
            return _answer(sock)
        user, password = request.user or (None, None)
        socks5_greet(sock, user, password)
        if request.domain_atyp:
            host = request.host.encode()
            sock.sendall(bytes([5, CMD_CONNECT, 0, 3, len(host)]) + host + struct.pack("!H", request.port))
            reply = read_socks5_reply(sock)
        else:
            reply = socks5_request(sock, CMD_CONNECT, request.host, request.port)
        if reply[1] != REPLY_SUCCEEDED:
            return f"(socks reply {reply[1]})"
        if request.payload:
            sock.sendall(request.payload)
        return _answer(sock)


def http_connect_route(proxy_port: int, request: Request) -> str:
    """HTTP CONNECT to ``host:port``; the sink's tag after the proxy's 200, or the status."""
    target = f"[{request.host}]:{request.port}" if ":" in request.host else f"{request.host}:{request.port}"
    auth = ""
    if request.user is not None:
        token = base64.b64encode(":".join(request.user).encode()).decode()
        auth = f"Proxy-Authorization: Basic {token}\r\n"
    with _client(proxy_port, request.source) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < LINE_LIMIT * 4:
            chunk = sock.recv(1)
            if not chunk:
                return f"(closed after {head!r})"
            head += chunk
        status = head.split(b" ", 2)[1].decode("ascii", "replace")
        if status != "200":
            return f"(http {status})"
        if request.payload:
            sock.sendall(request.payload)
        return _answer(sock)


def udp_route(proxy_port: int, request: Request) -> str:
    """SOCKS5 UDP ASSOCIATE, one datagram to ``host:port``: the tag of the UDP sink that
    answered, else NO_REPLY."""
    with _client(proxy_port, (request.source[0], 0)) as control:
        socks5_greet(control)
        reply = socks5_request(control, CMD_UDP, "0.0.0.0", 0)
        if reply[1] != REPLY_SUCCEEDED:
            return f"(socks reply {reply[1]})"
        relay_port = struct.unpack("!H", reply[-2:])[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((request.source[0], 0))
            udp.settimeout(UDP_WAIT)
            header = b"\x00\x00\x00" + socks5_address(request.host) + struct.pack("!H", request.port)
            udp.sendto(header + request.payload, ("127.0.0.1", relay_port))
            try:
                data = udp.recv(4096)
            except socket.timeout:
                return NO_REPLY
        return data[len(header):].decode("ascii", "replace") if data.startswith(b"\x00\x00\x00") else repr(data)


def free_source_port(low: int, high: int, host: str = "127.0.0.1") -> int:
    """A port in [low, high] a client can bind on ``host`` right now (one a closed client
    left in TIME_WAIT cannot be bound without SO_REUSEADDR, so it is passed over)."""
    ports = list(range(low, high + 1))
    random.shuffle(ports)
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
                return port
            except OSError:
                continue
    raise AssertionError(f"no free source port in {low}-{high} on {host}")


def describe(request: Request, answers: Tuple[str, str], pair: RoutedPair) -> str:
    return f"{request}: v2ray routed to {answers[0]!r}, v2sync to {answers[1]!r}\n{pair.logs()}"
