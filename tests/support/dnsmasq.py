"""Debian's ``dnsmasq`` as a real, independent DNS server on loopback for tests.

v2sync's DNS client is checked against a resolver nobody here wrote: the test starts
dnsmasq on a free port of 127.0.0.1 with its own config file (no /etc/resolv.conf, no
/etc/hosts, no upstream), serving only the records the test gives it; every other name gets
NXDOMAIN at once. ``Dnsmasq.lookup`` asks it with dnspython, the test's own independent
client, which is also how readiness is detected.

Like tests/support/procs.py, a missing binary fails the test under ``$CI`` and skips it
elsewhere, and the process is always stopped (SIGTERM, then SIGKILL after a bound).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from support.peers import free_port
from support.procs import missing_peer

READY_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
QUERY_TIMEOUT_SECONDS = 0.5
POLL_SECONDS = 0.05
READY_NAME = "ready.dnsmasq.test"
READY_ADDRESS = "127.0.0.53"


def require_dnsmasq() -> str:
    """Path of ``dnsmasq``; fails the test under ``$CI`` and skips it elsewhere if missing."""
    path = shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None)
    if path is None:
        missing_peer("dnsmasq (Debian package dnsmasq) is not installed")
    return path


class Dnsmasq:
    """dnsmasq answering ``records`` (exact name -> IPv4/IPv6 strings; a family the name
    lacks gets an empty NOERROR answer), ``cnames`` (alias -> target among ``records``) and
    NXDOMAIN for every other name; ``ttl`` is the TTL of every local answer."""

    def __init__(self, binary: str, records: Mapping[str, Sequence[str]], *,
                 cnames: Optional[Mapping[str, str]] = None, ttl: int = 60, host: str = "127.0.0.1"):
        self.binary = binary
        self.records = {name: list(ips) for name, ips in records.items()}
        self.cnames = dict(cnames or {})
        self.ttl = ttl
        self.host = host
        self.port = 0
        self.workdir: Optional[Path] = None
        self._proc: Optional["subprocess.Popen[bytes]"] = None

    @property
    def address(self) -> tuple:
        return (self.host, self.port)

    def config_lines(self) -> List[str]:
        lines = [f"port={self.port}", f"listen-address={self.host}", "bind-interfaces",
                 "no-resolv", "no-hosts", "no-poll", "user=root" if os.geteuid() == 0 else "",
                 f"local-ttl={self.ttl}", f"auth-ttl={self.ttl}", "log-queries",
                 f"host-record={READY_NAME},{READY_ADDRESS}", "local=/#/"]  # no upstream: NXDOMAIN
        # host-record: the exact name only; a family it lacks gets an empty NOERROR answer.
        # One line per address: a host-record holds one IPv4 and one IPv6 address at most.
        lines.extend(f"host-record={name},{ip}" for name, ips in self.records.items() for ip in ips)
        # cname= only points at names dnsmasq itself answers (its host-record list).
        lines.extend(f"cname={alias},{target}" for alias, target in self.cnames.items())
        return [line for line in lines if line]

    def start(self) -> "Dnsmasq":
        self.port = free_port(self.host)
        self.workdir = Path(tempfile.mkdtemp(prefix="dnsmasq-"))
        conf = self.workdir / "dnsmasq.conf"
        conf.write_text("\n".join(self.config_lines()) + "\n")
        command = [self.binary, "--keep-in-foreground", f"--conf-file={conf}",
                   f"--pid-file={self.workdir / 'dnsmasq.pid'}", f"--log-facility={self.workdir / 'log'}"]
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self._proc.returncode}: {self.stderr()}")
            if READY_ADDRESS in self.lookup(READY_NAME, "A"):
                return
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"dnsmasq not answering on {self.address} after {READY_TIMEOUT_SECONDS} s")

    def lookup(self, name: str, rdtype: str = "A") -> List[str]:
        """The addresses dnsmasq answers for ``name`` (dnspython's client); [] on no answer."""
        import dns.exception
        import dns.message
        import dns.query
        import dns.rdatatype

        query = dns.message.make_query(name, rdtype)
        try:
            reply = dns.query.udp(query, self.host, port=self.port, timeout=QUERY_TIMEOUT_SECONDS)
        except (dns.exception.Timeout, OSError):
            return []
        wanted = dns.rdatatype.from_text(rdtype)
        return [rr.to_text() for rrset in reply.answer if rrset.rdtype == wanted for rr in rrset]

    def query_log(self) -> str:
        """dnsmasq's own log of the queries it received (``log-queries``)."""
        assert self.workdir is not None
        try:
            return (self.workdir / "log").read_text(errors="replace")
        except OSError:
            return ""

    def stderr(self) -> str:
        if self._proc is None or self._proc.stderr is None or self._proc.poll() is None:
            return ""
        return self._proc.stderr.read().decode(errors="replace")

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_SECONDS)
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Dnsmasq":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
