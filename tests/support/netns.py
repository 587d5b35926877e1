"""Network namespaces for gateway tests: a client, a gateway and an "internet" host.

``GatewayNet`` builds three namespaces joined by veth pairs (everything is created inside
them, nothing on the host's own stack)::

    client 10.231.1.2 --- 10.231.1.1 gateway 10.231.2.1 --- 10.231.2.2 internet

The client's default route is the gateway, which does not forward (ip_forward stays 0), so
the internet host is reachable from the client only through a proxy on the gateway that
iptables REDIRECT/TPROXY rules (added with ``iptables``) send its traffic to. ``close()``
removes the rules, then the namespaces. Sockets made inside ``entered(ns)`` belong to that
namespace for life, whatever thread uses them later (setns(2) moves only the calling thread).
Needs root, ``ip`` and ``iptables``; ``available()`` says whether this machine has them.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, List, Mapping, Sequence

from support.procs import missing_peer

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"
COMMAND_TIMEOUT = 10.0
CLIENT_IP, GATEWAY_CLIENT_SIDE = "10.231.1.2", "10.231.1.1"
GATEWAY_INTERNET_SIDE, INTERNET_IP = "10.231.2.1", "10.231.2.2"
# The same over IPv6 (unique local addresses; "nodad" makes them usable at once).
CLIENT_IP6, GATEWAY_CLIENT_SIDE6 = "fd31::2", "fd31::1"
GATEWAY_INTERNET_SIDE6, INTERNET_IP6 = "fd32::1", "fd32::2"
TPROXY_MARK, TPROXY_TABLE = "1", "100"

_libc = ctypes.CDLL(None, use_errno=True)


def available() -> bool:
    return os.geteuid() == 0 and all(shutil.which(tool)
                                     for tool in ("ip", "iptables", "ip6tables"))


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """This thread inside namespace ``name`` for the block, then back where it was."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


@contextlib.contextmanager
def loopback_namespace(prefix: str, sysctls: Mapping[str, str]) -> Iterator[str]:
    """A namespace of its own with only ``lo`` up and ``sysctls`` set in it (per-namespace
    ones: port ranges, TCP buffers); removed on exit. Needs root: fails under ``$CI``,
    skips elsewhere."""
    if not available():
        missing_peer("network namespaces need root, ip and iptables")
    name = f"{prefix}-{os.getpid()}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        for key, value in sysctls.items():
            run("ip", "netns", "exec", name, "sysctl", "-q", "-w", f"{key}={value}")
        yield name
    finally:
        run("ip", "netns", "del", name)


class GatewayNet:
    def __init__(self, prefix: str):
        self.client = f"{prefix}-c"
        self.gateway = f"{prefix}-g"
        self.internet = f"{prefix}-i"
        self._rules: List[Sequence[str]] = []  # iptables -A arguments, for the -D at close

    def exec_prefix(self, ns: str) -> List[str]:
        return ["ip", "netns", "exec", ns]

    def build(self) -> "GatewayNet":
        for ns in (self.client, self.gateway, self.internet):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", self.client, "link", "add", "c0", "type", "veth", "peer", "name", "g0",
            "netns", self.gateway)
        run("ip", "-n", self.gateway, "link", "add", "g1", "type", "veth", "peer", "name", "i0",
            "netns", self.internet)
        self._address(self.client, "c0", CLIENT_IP, CLIENT_IP6)
        self._address(self.gateway, "g0", GATEWAY_CLIENT_SIDE, GATEWAY_CLIENT_SIDE6)
        self._address(self.gateway, "g1", GATEWAY_INTERNET_SIDE, GATEWAY_INTERNET_SIDE6)
        self._address(self.internet, "i0", INTERNET_IP, INTERNET_IP6)
        for ns, via, via6 in ((self.client, GATEWAY_CLIENT_SIDE, GATEWAY_CLIENT_SIDE6),
                              (self.internet, GATEWAY_INTERNET_SIDE, GATEWAY_INTERNET_SIDE6)):
            run("ip", "-n", ns, "route", "add", "default", "via", via)
            run("ip", "-n", ns, "-6", "route", "add", "default", "via", via6)
        return self

    def _address(self, ns: str, dev: str, ip: str, ip6: str) -> None:
        run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        run("ip", "-n", ns, "addr", "add", f"{ip6}/64", "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", dev, "up")

    def iptables(self, table: str, *rule: str, tool: str = "iptables") -> None:
        """Append a rule in the gateway (``tool`` ip6tables for IPv6); ``close`` deletes it."""
        run(*self.exec_prefix(self.gateway), tool, "-w", "-t", table, "-A", *rule)
        self._rules.append((tool, table, *rule))

    def redirect(self, protocol: str, port: int) -> None:
        self.iptables("nat", "PREROUTING", "-i", "g0", "-p", protocol, "-j", "REDIRECT",
                      "--to-ports", str(port))

    def tproxy(self, protocol: str, port: int, ipv6: bool = False) -> None:
        """The TPROXY pattern of V2Ray's transparent-proxy guides: mark, then deliver
        marked packets locally."""
        tool, family, everything = (("ip6tables", "-6", "::/0") if ipv6
                                    else ("iptables", "-4", "0.0.0.0/0"))
        if not any(rule[0] == tool and "TPROXY" in rule for rule in self._rules):
            run("ip", "-n", self.gateway, family, "rule", "add", "fwmark", TPROXY_MARK,
                "lookup", TPROXY_TABLE)
            run("ip", "-n", self.gateway, family, "route", "add", "local", everything,
                "dev", "lo", "table", TPROXY_TABLE)
        self.iptables("mangle", "PREROUTING", "-i", "g0", "-p", protocol, "-j", "TPROXY",
                      "--on-port", str(port), "--tproxy-mark", f"{TPROXY_MARK}/{TPROXY_MARK}",
                      tool=tool)

    def close(self) -> None:
        errors = []
        for tool, table, *rule in reversed(self._rules):
            try:
                run(*self.exec_prefix(self.gateway), tool, "-w", "-t", table, "-D", *rule)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                errors.append(str(e))
        self._rules.clear()
        for ns in (self.client, self.gateway, self.internet):
            if os.path.exists(os.path.join(NETNS_DIR, ns)):
                try:
                    run("ip", "netns", "del", ns)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    errors.append(str(e))
        if errors:
            raise RuntimeError("; ".join(errors))


@contextlib.contextmanager
def gateway_net() -> Iterator[GatewayNet]:
    """A built ``GatewayNet``, always torn down; skips (fails under ``$CI``) without root,
    ``ip`` or ``iptables``."""
    if not available():
        import pytest

        message = "needs root, ip and iptables"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    net = GatewayNet(f"v2s{os.getpid()}")
    try:
        yield net.build()
    finally:
        net.close()


def in_namespace(cls: type, ns: str) -> type:
    """A ``ConfigProcess`` class whose command runs inside namespace ``ns``."""
    class Namespaced(cls):  # type: ignore[misc, valid-type]
        def command(self, config_path: Path) -> List[str]:
            return ["ip", "netns", "exec", ns, *super().command(config_path)]

        @property
        def endpoints(self):  # ports in another namespace: wait for the ready line only
            return []
    return Namespaced
