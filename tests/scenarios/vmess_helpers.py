"""Shared helpers for the VMess scenario tests (issue 3): configs, a process-pair pool, clients.

Configs are plain dicts in V2Ray 4.34's JSON shape, the same for v2ray and v2sync, so a test
reads like the config a user would write:

    client process:  SOCKS5 (udp on) -> vmess outbound --+
    server process:  vmess inbound -> freedom  <----------+ -> in-test origin

``ChainPool`` starts such a pair of real processes (either implementation at either end)
and keeps the few most recently used pairs running, so the interop tests pay for a process
start once per combination, not once per test. ``RawVMessClient`` speaks VMess over a raw
socket with v2sync's own codec: the bad-input tests need header bytes they control (a
truncated, expired or replayed header), and interop with real v2ray is covered elsewhere.
Every read has a deadline: a hung proxy fails a test, it never hangs it.
"""
from __future__ import annotations

import collections
import contextlib
from concurrent.futures import ThreadPoolExecutor
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pytest

from scenarios.helpers_scenarios import (CMD_CONNECT, REPLY_SUCCEEDED, socks5_greet,
                                         socks5_request)
from support.peers import connect_loopback, free_port
from support.procs import ConfigProcess, V2RayProcess, V2SyncProcess, require_v2ray

from v2sync.common.net import Address
from v2sync.proxy.vmess.encoding import (ClientSession, Command, RequestHeader,
                                         client_options)
from v2sync.proxy.vmess.ids import Security, VMessUser

# Fixed ids, so a failing run can be replayed by hand with the same configs.
USER_ID = "b831381d-6324-4d53-ad4f-8cda48b30811"
STRANGER_ID = "0f6cbd67-0c4e-4d0b-8e8c-8f7a1e5b9d12"

IO_TIMEOUT = 20.0           # one socket operation through a two-process chain on 2 busy cores
TRANSFER_TIMEOUT = 60.0     # one whole bulk exchange
JOIN_TIMEOUT = 10.0
RECV_SIZE = 256 * 1024
LOG_TAIL = 2000
IMPLEMENTATIONS = ("v2sync", "v2ray")


# -- configs ----------------------------------------------------------------------------------

def vmess_client_entry(user_id: str = USER_ID, alter_id: int = 0, security: str = "auto",
                       **extra: Any) -> Dict[str, Any]:
    """One entry of an inbound's ``clients`` or an outbound server's ``users``."""
    return {"id": user_id, "alterId": alter_id, "security": security, **extra}


def vmess_inbound(clients: Sequence[Mapping[str, Any]], *, tag: str = "vmess-in", port: int = 0,
                  disable_insecure: bool = False) -> Dict[str, Any]:
    settings: Dict[str, Any] = {"clients": [dict(c) for c in clients]}
    if disable_insecure:
        settings["disableInsecureEncryption"] = True
    return {"tag": tag, "protocol": "vmess", "listen": "127.0.0.1", "port": port,
            "settings": settings}


def vmess_outbound(server_port: int, security: str, alter_id: int, *, tag: str = "vmess-out",
                   user_id: str = USER_ID) -> Dict[str, Any]:
    user = vmess_client_entry(user_id, alter_id, security)
    return {"tag": tag, "protocol": "vmess",
            "settings": {"vnext": [{"address": "127.0.0.1", "port": server_port,
                                    "users": [user]}]}}


def _log_section() -> Dict[str, Any]:
    # "warning" keeps the ready line ("... started") and errors; no access log noise.
    return {"loglevel": "warning", "access": "none"}


def _with_stream(handler: Dict[str, Any], stream: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    if stream:
        handler["streamSettings"] = dict(stream)
    return handler


def server_config(vmess_port: int, alter_id: int,
                  stream: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """vmess inbound on ``vmess_port`` (over ``stream``) -> freedom: the server process."""
    inbound = vmess_inbound([vmess_client_entry(alter_id=alter_id)], port=vmess_port)
    return {"log": _log_section(), "inbounds": [_with_stream(inbound, stream)],
            "outbounds": [{"tag": "direct", "protocol": "freedom", "settings": {}}]}


def client_config(socks_port: int, vmess_port: int, security: str, alter_id: int,
                  stream: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """SOCKS5 (no auth, UDP on) on ``socks_port`` -> vmess outbound to ``vmess_port``."""
    socks_in = {"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1", "port": socks_port,
                "settings": {"auth": "noauth", "udp": True, "ip": "127.0.0.1"}}
    outbound = vmess_outbound(vmess_port, security, alter_id)
    return {"log": _log_section(), "inbounds": [socks_in],
            "outbounds": [_with_stream(outbound, stream)]}


# A transport name -> (server streamSettings, client streamSettings); "tcp" needs none.
StreamsFor = Callable[[str], Tuple[Mapping[str, Any], Mapping[str, Any]]]


# -- process pairs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ChainKey:
    client: str      # "v2sync" or "v2ray": the process with the SOCKS inbound
    server: str      # the process with the vmess inbound
    security: str    # the outbound user's security, as written in the config
    alter_id: int
    transport: str = "tcp"  # a name the pool's StreamsFor knows (issue 4)

    @property
    def id(self) -> str:
        suffix = "" if self.transport == "tcp" else f"-{self.transport}"
        return f"{self.client}-to-{self.server}-{self.security}-alter{self.alter_id}{suffix}"


@dataclass
class Chain:
    key: ChainKey
    server: ConfigProcess
    client: ConfigProcess
    socks_port: int

    def processes(self) -> List[ConfigProcess]:
        return [self.server, self.client]

    def dead(self) -> List[str]:
        return [f"{p.name} exited with {p.returncode}" for p in self.processes()
                if p.returncode is not None]

    def logs(self) -> str:
        """The tail of both processes' logs, for failure messages."""
        return "\n".join(f"--- {role} ({p.name}) log ---\n{p.log_tail(LOG_TAIL)}"
                         for role, p in (("server", self.server), ("client", self.client)))


# 4.34's access line for an AEAD header its replay filter refused. Its filter is a pair of
# cuckoo filters, whose false positives refuse a fresh AuthID now and then (about one in
# 10,000 connections here, more as they fill); the server drains and closes, and the client
# sees the end before any answer. v2sync's own filter is exact (README, "Benchmarks").
FALSE_REPLAY = "invalid user > replayed request"


def false_replays(chain: Chain) -> int:
    """Fresh AuthIDs the chain's v2ray server has refused as replays so far (its log's
    access lines); 0 for a v2sync server, which refuses none."""
    if chain.key.server != "v2ray":
        return 0
    return chain.server.log_text().count(FALSE_REPLAY)


def make_process(implementation: str, config: Mapping[str, Any]) -> ConfigProcess:
    if implementation == "v2ray":
        return V2RayProcess(config, binary=require_v2ray())  # fails under $CI if missing
    if implementation == "v2sync":
        return V2SyncProcess(config)
    raise ValueError(f"unknown implementation {implementation!r}, expected one of {IMPLEMENTATIONS}")


def start_chain(key: ChainKey, streams: Optional[StreamsFor] = None) -> Chain:
    """Start the server process, then the client process pointing at it."""
    vmess_port, socks_port = free_port(), free_port()
    server_stream, client_stream = streams(key.transport) if streams else ({}, {})
    config = server_config(vmess_port, key.alter_id, server_stream)
    if key.server == "v2ray":  # its access lines name the AuthIDs it refused (false_replays)
        del config["log"]["access"]
    server = make_process(key.server, config).start()
    try:
        client = make_process(key.client, client_config(socks_port, vmess_port, key.security,
                                                         key.alter_id, client_stream)).start()
    except BaseException:
        server.stop(check=False)
        raise
    return Chain(key, server, client, socks_port)


class ChainPool:
    """Running chains by key, least recently used stopped first beyond ``capacity``.

    A process that fails its exit check when stopped (v2sync must exit 0 on SIGTERM) is
    recorded in ``errors``; the owning fixture fails the module with them at teardown.
    """

    def __init__(self, capacity: int, streams: Optional[StreamsFor] = None):
        self.capacity = capacity
        self.streams = streams
        self.errors: List[str] = []
        self._chains: "collections.OrderedDict[ChainKey, Chain]" = collections.OrderedDict()

    def get(self, key: ChainKey) -> Chain:
        chain = self._chains.get(key)
        if chain is not None and chain.dead():
            self._stop(self._chains.pop(key))  # a crash is reported by the test that saw it
            chain = None
        if chain is None:
            while len(self._chains) >= self.capacity:
                self._stop(self._chains.popitem(last=False)[1])
            chain = start_chain(key, self.streams)
            self._chains[key] = chain
        self._chains.move_to_end(key)
        return chain

    def live(self, key: ChainKey) -> Chain:
        """``get``, asserting both processes are running (with their logs if not)."""
        chain = self.get(key)
        assert not chain.dead(), f"{chain.dead()}\n{chain.logs()}"
        return chain

    def _stop(self, chain: Chain) -> None:
        for process in (chain.client, chain.server):  # clients before servers
            try:
                process.stop()
            except AssertionError as error:
                self.errors.append(f"{chain.key.id}: {error}")

    def close(self) -> None:
        while self._chains:
            self._stop(self._chains.popitem()[1])


@contextlib.contextmanager
def running_pool(capacity: int, streams: Optional[StreamsFor] = None) -> Iterator[ChainPool]:
    """A ChainPool for a test module; a process that failed its exit check fails the module."""
    chains = ChainPool(capacity, streams)
    try:
        yield chains
    finally:
        chains.close()
    if chains.errors:
        pytest.fail("\n\n".join(chains.errors), pytrace=False)


# -- SOCKS and byte exchange --------------------------------------------------------------------

def open_tunnel(socks_port: int, target: Tuple[str, int], timeout: float = IO_TIMEOUT,
                receive_buffer: Optional[int] = None) -> socket.socket:
    """A socket with a successful SOCKS5 CONNECT to ``target`` (an IPv4 literal) done;
    ``receive_buffer``: SO_RCVBUF set before the connect (a client that barely reads)."""
    sock = connect_loopback(socks_port, timeout, receive_buffer)
    try:
        socks5_greet(sock)
        reply = socks5_request(sock, CMD_CONNECT, target[0], target[1])
        assert reply[1] == REPLY_SUCCEEDED, f"CONNECT refused: {reply!r}"
        return sock
    except BaseException:
        sock.close()
        raise


def recv_exactly(sock: socket.socket, n: int, timeout: float = TRANSFER_TIMEOUT) -> bytes:
    """Exactly ``n`` bytes; AssertionError on an early EOF, a reset or past ``timeout`` seconds."""
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    deadline = time.monotonic() + timeout
    while got < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {got} of {n} bytes after {timeout} s")
        try:
            received = sock.recv_into(view[got:], min(RECV_SIZE, n - got))
        except (ConnectionResetError, socket.timeout) as error:
            raise AssertionError(f"{error!r} after {got} of {n} bytes") from None
        if received == 0:
            raise AssertionError(f"EOF after {got} of {n} bytes")
        got += received
    return bytes(buffer)


def read_to_eof(sock: socket.socket, timeout: float, limit: int = 64 * 1024 * 1024) -> bytes:
    """Everything until the peer closes; AssertionError if it is still open after ``timeout``."""
    chunks: List[bytes] = []
    total = 0
    deadline = time.monotonic() + timeout
    while total <= limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(RECV_SIZE)
        except socket.timeout:
            break
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    raise AssertionError(f"peer still open after {timeout} s ({total} bytes received)")


def exchange(sock: socket.socket, payload: bytes, timeout: float = TRANSFER_TIMEOUT) -> bytes:
    """Send ``payload`` from a helper thread while reading ``len(payload)`` bytes back.

    Sending and receiving at once keeps the pipes moving: a big payload sent first would
    fill every buffer on the way and deadlock against an echo that nobody reads.
    """
    errors: List[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(payload)
        except OSError as error:
            errors.append(error)

    sender = threading.Thread(target=send, name="vmess-test-sender", daemon=False)
    sender.start()
    try:
        received = recv_exactly(sock, len(payload), timeout)
    except BaseException:
        _wake(sock)  # the sender may be blocked in sendall
        raise
    finally:
        sender.join(JOIN_TIMEOUT)
    assert not sender.is_alive(), "sender thread still blocked after the echo came back"
    assert not errors, f"send failed: {errors[0]!r}"
    return received


def exchange_in_parallel(socks_port: int, target: Tuple[str, int], payloads: Sequence[bytes],
                         name: str) -> List[bytes]:
    """One tunnel per payload, all open before any data moves (so they really are
    concurrent), exchanged at once; what came back, in order. Every tunnel is closed."""
    tunnels: List[socket.socket] = []
    try:
        for _ in payloads:
            tunnels.append(open_tunnel(socks_port, target))
        with ThreadPoolExecutor(len(payloads), thread_name_prefix=name) as workers:
            return list(workers.map(exchange, tunnels, payloads))
    finally:
        for tunnel in tunnels:
            tunnel.close()


def _wake(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def echo_datagrams(chain: Any, udp_echo: Any, payloads: Sequence[bytes]) -> None:
    """Each payload through one SOCKS5 UDP association on ``chain.socks_port``; its XORed
    echo (an XOR ``UdpEchoServer``) must come back from the echo's address."""
    import socks

    from support.peers import xor_bytes

    with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", chain.socks_port)
        sock.settimeout(IO_TIMEOUT / 2)
        for i, payload in enumerate(payloads):
            sock.sendto(payload, udp_echo.address)
            try:
                data, source = sock.recvfrom(4096)
            except socket.timeout:
                raise AssertionError(f"no reply to datagram {i}\n{chain.logs()}") from None
            assert data == xor_bytes(payload), f"datagram {i}"
            assert source == udp_echo.address


def assert_same_bytes(received: bytes, expected: bytes, context: str = "") -> None:
    """Byte-for-byte equality with a short message (pytest's diff of 8 MiB is unreadable)."""
    if received == expected:
        return
    first = next((i for i, (a, b) in enumerate(zip(received, expected)) if a != b),
                 min(len(received), len(expected)))
    raise AssertionError(f"{len(received)} bytes received, {len(expected)} expected; first "
                         f"difference at offset {first}: {received[first:first + 16]!r} != "
                         f"{expected[first:first + 16]!r}\n{context}")


# -- a raw VMess client (v2sync's codec) for the bad-input tests -----------------------------

def tcp_request(target: Tuple[str, int], security: Security = Security.AES128_GCM) -> RequestHeader:
    """What a 4.34 client asks for: TCP to ``target`` with its option byte for ``security``."""
    return RequestHeader(Command.TCP, security, client_options(security),
                         Address.parse(target[0]), target[1])


class RawVMessClient:
    """One VMess connection's client side: ``first_flight`` bytes out, the echo back in."""

    def __init__(self, user: VMessUser, header: RequestHeader):
        self.user = user
        self.header = header
        self.session = ClientSession(user)
        self._writer = self.session.request_body_writer(header)

    def header_bytes(self, now: Optional[float] = None) -> bytes:
        return self.session.encode_request_header(self.header, time.time() if now is None else now)

    def body(self, payload: bytes) -> bytes:
        return self._writer.encode(payload)

    def first_flight(self, payload: bytes, now: Optional[float] = None) -> bytes:
        """Header plus one body chunk, as one write (what outbound.go sends)."""
        return self.header_bytes(now) + self.body(payload)

    def read_response(self, sock: socket.socket, n: int, timeout: float = IO_TIMEOUT) -> bytes:
        """The response header, then ``n`` bytes of response body."""
        deadline = time.monotonic() + timeout
        buf = b""
        parsed = self.session.decode_response_header(buf)
        while parsed is None:
            buf += _recv_before(sock, deadline, "the response header")
            parsed = self.session.decode_response_header(buf)
        reader = self.session.response_body_reader(self.header)
        out = b"".join(reader.feed(buf[parsed[1]:]))
        while len(out) < n:
            out += b"".join(reader.feed(_recv_before(sock, deadline, f"{n} body bytes")))
        return out


def _recv_before(sock: socket.socket, deadline: float, what: str) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise AssertionError(f"timed out waiting for {what}")
    sock.settimeout(left)
    data = sock.recv(RECV_SIZE)
    if not data:
        raise AssertionError(f"server closed before {what}")
    return data
