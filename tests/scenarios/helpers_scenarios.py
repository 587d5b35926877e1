"""Shared helpers for the core-platform scenario tests (HTTP/SOCKS in, freedom/blackhole out).

Config builders return plain dicts in V2Ray 4.34's JSON shape, so a test reads like the config
a user would write. ``running_instance`` runs v2sync in this process (needed for thread and fd
accounting); the ``v2sync_process`` fixture runs it as a real CLI process. Raw-socket helpers
speak just enough HTTP/SOCKS to check replies byte for byte; curl and PySocks are the real,
independent clients. Every read has a deadline: a hung proxy fails a test, it never hangs it.
"""
from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from support.procs import REPO_ROOT

from v2sync.core import Instance
from v2sync.infra.conf.builder import config_from_dict

IO_TIMEOUT = 5.0  # seconds for any single socket operation in a test
CURL_MAX_TIME = 15  # curl's own --max-time
CURL_TIMEOUT = 25.0  # subprocess hard limit, above curl's own
MAX_READ = 64 * 1024 * 1024  # cap on what read_until_closed accumulates
IDLE_TIMEOUT = 10.0
CLI_TIMEOUT = 30.0

SOCKS5 = 0x05
SOCKS4 = 0x04
CMD_CONNECT, CMD_BIND, CMD_UDP = 0x01, 0x02, 0x03
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04
REPLY_SUCCEEDED = 0x00
REPLY_CMD_NOT_SUPPORTED = 0x07
SOCKS4_GRANTED, SOCKS4_REJECTED = 0x5A, 0x5B

# blackhole/config.go's HTTP response (a Go raw string: bare LF, two blank lines at the end),
# as tests/scenarios/test_inbound_replies_differential.py receives it from the real v2ray.
BLACKHOLE_403 = (b"HTTP/1.1 403 Forbidden\nConnection: close\n"
                 b"Cache-Control: max-age=3600, public\nContent-Length: 0\n\n\n")

# Proxy variables in the environment would make curl go somewhere we did not ask for.
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
              "ALL_PROXY", "NO_PROXY")


# -- config builders --------------------------------------------------------------------------

def socks_inbound(tag: str = "socks-in", port: int = 0, **settings: Any) -> Dict[str, Any]:
    return {"tag": tag, "protocol": "socks", "listen": "127.0.0.1", "port": port,
            "settings": {"auth": "noauth", **settings}}


def http_inbound(tag: str = "http-in", port: int = 0, **settings: Any) -> Dict[str, Any]:
    return {"tag": tag, "protocol": "http", "listen": "127.0.0.1", "port": port,
            "settings": dict(settings)}


def freedom(tag: str = "direct", **settings: Any) -> Dict[str, Any]:
    return {"tag": tag, "protocol": "freedom", "settings": dict(settings)}


def blackhole(tag: str = "block", response: Optional[str] = None) -> Dict[str, Any]:
    settings = {"response": {"type": response}} if response else {}
    return {"tag": tag, "protocol": "blackhole", "settings": settings}


def accounts(*pairs: Tuple[str, str]) -> List[Dict[str, str]]:
    return [{"user": user, "pass": password} for user, password in pairs]


def make_config(inbounds: Sequence[Mapping[str, Any]],
                outbounds: Optional[Sequence[Mapping[str, Any]]] = None, *,
                handshake: Optional[int] = None,
                log: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A whole config; ``handshake`` sets policy level 0's handshake deadline (seconds)."""
    config: Dict[str, Any] = {"inbounds": list(inbounds), "outbounds": list(outbounds or [freedom()])}
    if handshake is not None:
        config["policy"] = {"levels": {"0": {"handshake": handshake}}}
    if log is not None:
        config["log"] = dict(log)
    return config


# -- in-process instance ----------------------------------------------------------------------

@contextlib.contextmanager
def running_instance(config: Mapping[str, Any]) -> Iterator[Instance]:
    """Build, start and (always) close an Instance for ``config``."""
    instance = Instance(config_from_dict(config))
    instance.start()
    try:
        yield instance
    finally:
        instance.close()


def port_of(instance: Instance, tag: str) -> int:
    """The first listening port of the inbound tagged ``tag`` (port 0 in the config is fine)."""
    handler = instance.inbounds.get(tag)
    assert handler is not None, f"no inbound tagged {tag!r}"
    return handler.ports()[0]


def _selector_count(instance: Instance) -> int:
    """The one thread waiting in the handshake selector (it serves what it accepts)."""
    return 1 if instance.inbounds.selector is not None else 0


def busy_tasks(instance: Instance) -> List[str]:
    """Names of the instance's running worker tasks (one waiting in the handshake
    selector is normal: a worker that completes a handshake also serves it)."""
    return [task.name for task in instance.workers.live()]


def is_idle(instance: Instance) -> bool:
    """No live connection, and no worker task beyond the selector's waiting one."""
    return (instance.inbounds.live_count() == 0
            and len(instance.workers.live()) <= _selector_count(instance))


def wait_idle(instance: Instance, timeout: float = IDLE_TIMEOUT) -> None:
    """Wait until the instance has no connection, relay or outbound task left."""
    deadline = time.monotonic() + timeout
    while not is_idle(instance):
        if time.monotonic() > deadline:
            raise AssertionError(f"instance not idle after {timeout} s: "
                                 f"{instance.inbounds.live_count()} live connection(s), "
                                 f"tasks {busy_tasks(instance)}")
        time.sleep(0.05)


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


# -- the v2sync command line -------------------------------------------------------------------

def cli_env(**extra: str) -> Dict[str, str]:
    """The environment for ``python -m v2sync``: this checkout first on the path, unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, **env: str) -> "subprocess.CompletedProcess[str]":
    """``python -m v2sync ARGS`` to completion (bounded), stdout and stderr merged."""
    return subprocess.run([sys.executable, "-m", "v2sync", *args], cwd=str(cwd),
                          env=cli_env(**env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=CLI_TIMEOUT, check=False)


# -- curl -------------------------------------------------------------------------------------

def _curl_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _PROXY_ENV}


def curl(*args: str, timeout: float = CURL_TIMEOUT) -> "subprocess.CompletedProcess[bytes]":
    """Run curl (silent, errors shown) with ``args``; stdout/stderr captured as bytes."""
    command = ["curl", "-sS", "--max-time", str(CURL_MAX_TIME), *args]
    return subprocess.run(command, capture_output=True, timeout=timeout, env=_curl_env(),
                          stdin=subprocess.DEVNULL, check=False)


def curl_ok(*args: str) -> bytes:
    """curl's stdout; fails the test with curl's stderr if curl exits non-zero."""
    result = curl(*args)
    assert result.returncode == 0, (f"curl {' '.join(args)} exited {result.returncode}: "
                                    f"{result.stderr.decode(errors='replace')}")
    return result.stdout


def curl_status(*args: str) -> int:
    """The HTTP status curl saw (``000`` -> 0 when there was no response)."""
    result = curl("-o", os.devnull, "-w", "%{http_code}", *args)
    return int(result.stdout.decode().strip() or 0)


# -- raw sockets ------------------------------------------------------------------------------

def connect(port: int, host: str = "127.0.0.1", timeout: float = IO_TIMEOUT) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def how_it_ends(sock: socket.socket, wait: float) -> str:
    """"" (nothing within ``wait`` s), "reset", "fin", or the first bytes that came."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return ""
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        return "reset"
    return "fin" if not data else f"data {data[:16]!r}"


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {n} bytes: {data!r}")
        data += chunk
    return data


def read_until_closed(sock: socket.socket, timeout: float = IO_TIMEOUT,
                      limit: int = MAX_READ) -> bytes:
    """Everything the peer sends until it closes (a reset counts as a close).

    AssertionError if the peer keeps the connection open past ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    chunks: List[bytes] = []
    total = 0
    while total <= limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(256 * 1024)
        except socket.timeout:
            break
        except ConnectionResetError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    raise AssertionError(f"peer still open after {timeout} s (received {total} bytes: "
                         f"{b''.join(chunks)[:200]!r})")


def closed_within(sock: socket.socket, timeout: float) -> float:
    """Seconds until the peer closed (data it sent is discarded); AssertionError past timeout."""
    started = time.monotonic()
    read_until_closed(sock, timeout)
    return time.monotonic() - started


class HttpResponse:
    def __init__(self, status_line: str, headers: List[Tuple[str, str]], body: bytes):
        self.status_line = status_line
        self.headers = headers
        self.body = body

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def __repr__(self) -> str:
        return f"HttpResponse({self.status_line!r}, {self.headers!r}, {self.body[:80]!r})"


def read_head(sock: socket.socket, buf: bytes = b"") -> Tuple[bytes, bytes]:
    """An HTTP head (without its blank line) and any bytes read past it."""
    deadline = time.monotonic() + IO_TIMEOUT
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline or len(buf) > 64 * 1024:
            raise AssertionError(f"no complete head: {buf[:200]!r}")
        chunk = sock.recv(64 * 1024)
        if not chunk:
            raise AssertionError(f"closed before the head ended: {buf[:200]!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def read_http_response(sock: socket.socket, buf: bytes = b"") -> Tuple[HttpResponse, bytes]:
    """One response (Content-Length bodies, or none); returns it and any bytes read past it."""
    head, rest = read_head(sock, buf)
    lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    response = HttpResponse(lines[0], headers, b"")
    length = int(response.header("Content-Length") or 0)
    while len(rest) < length:
        chunk = sock.recv(64 * 1024)
        if not chunk:
            raise AssertionError(f"closed inside the body ({len(rest)} of {length} bytes)")
        rest += chunk
    response.body = rest[:length]
    return response, rest[length:]


def http_request(port: int, request: bytes) -> HttpResponse:
    """Send ``request`` on a new connection and read one response."""
    with connect(port) as sock:
        sock.sendall(request)
        return read_http_response(sock)[0]


# -- raw SOCKS --------------------------------------------------------------------------------

def socks5_address(host: str) -> bytes:
    """ATYP + address bytes for an IPv4 or IPv6 literal or a domain name."""
    for family, atyp in ((socket.AF_INET, ATYP_IPV4), (socket.AF_INET6, ATYP_IPV6)):
        try:
            return bytes([atyp]) + socket.inet_pton(family, host)
        except OSError:
            continue
    return bytes([ATYP_DOMAIN, len(host)]) + host.encode("ascii")


def read_socks5_reply(sock: socket.socket) -> bytes:
    """One whole SOCKS5 reply (VER REP RSV ATYP ADDR PORT)."""
    head = recv_exact(sock, 4)
    if head[3] == ATYP_IPV4:
        rest = recv_exact(sock, 4 + 2)
    elif head[3] == ATYP_IPV6:
        rest = recv_exact(sock, 16 + 2)
    elif head[3] == ATYP_DOMAIN:
        size = recv_exact(sock, 1)
        rest = size + recv_exact(sock, size[0] + 2)
    else:
        raise AssertionError(f"bad ATYP in reply {head!r}")
    return head + rest


def socks5_greet(sock: socket.socket, user: Optional[str] = None,
                 password: Optional[str] = None) -> None:
    """Method negotiation (and RFC 1929 auth when ``user`` is given); asserts success."""
    if user is None:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exact(sock, 2) == b"\x05\x00"
        return
    sock.sendall(b"\x05\x01\x02")
    assert recv_exact(sock, 2) == b"\x05\x02"
    assert password is not None
    sock.sendall(bytes([1, len(user)]) + user.encode() + bytes([len(password)]) + password.encode())
    status = recv_exact(sock, 2)
    assert status == b"\x01\x00", f"socks password auth refused: {status!r}"


def socks5_request(sock: socket.socket, command: int, host: str, port: int) -> bytes:
    """Send a request after the greeting; return the whole reply."""
    sock.sendall(bytes([SOCKS5, command, 0]) + socks5_address(host) + struct.pack("!H", port))
    return read_socks5_reply(sock)


@contextlib.contextmanager
def socks5_tunnel(proxy_port: int, host: str, port: int, user: Optional[str] = None,
                  password: Optional[str] = None) -> Iterator[socket.socket]:
    """A socket with a successful SOCKS5 CONNECT to ``host:port`` done."""
    with connect(proxy_port) as sock:
        socks5_greet(sock, user, password)
        reply = socks5_request(sock, CMD_CONNECT, host, port)
        assert reply[1] == REPLY_SUCCEEDED, f"CONNECT refused: {reply!r}"
        yield sock


def socks4_request(host_ip: str, port: int, user: bytes = b"", domain: Optional[str] = None) -> bytes:
    """A SOCKS4 CONNECT (SOCKS4a when ``domain`` is given)."""
    ip = socket.inet_aton("0.0.0.1") if domain else socket.inet_aton(host_ip)
    tail = (domain.encode() + b"\x00") if domain else b""
    return bytes([SOCKS4, CMD_CONNECT]) + struct.pack("!H", port) + ip + user + b"\x00" + tail


def get_request(url: str, host: str, extra: str = "") -> bytes:
    """A minimal HTTP/1.1 request line + headers (``extra``: more ``Name: value\\r\\n`` lines)."""
    return f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
