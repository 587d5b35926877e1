"""Prometheus metrics (v2sync's own; no V2Ray core has them), on ``prometheus-client``.

``/metrics`` is served on its own listener (``--metrics HOST:PORT`` or the config's
``metrics.listen``), not through routing. Figures are read when Prometheus scrapes, so the
relay pays nothing for them beyond the counters it keeps anyway:

- the traffic counters under wi1dcard/v2ray-exporter's names, so its Grafana dashboards
  work unchanged: ``v2ray_traffic_uplink_bytes_total{dimension,target}`` (and downlink),
  ``v2ray_up``, ``v2ray_uptime_seconds``, ``v2ray_goroutines``, ``v2ray_memstats_*``;
- ``v2sync_inbound_connections{inbound}`` (live), ``v2sync_inbound_handshake_failures_total``,
  ``v2sync_routing_decisions_total{outbound}``;
- prometheus-client's process collector (``process_resident_memory_bytes``, CPU, fds, ...).

The listener is prometheus-client's WSGI server with two bounds its ``start_http_server``
lacks (without them each half-sent request held a thread and a socket for good): a request
must arrive whole within ``REQUEST_DEADLINE`` seconds, and at most ``MAX_CONNECTIONS`` are
served at once, any further one being closed as soon as it is accepted.

Nothing here (nor prometheus-client) is imported unless metrics are asked for.
"""
from __future__ import annotations

import io
import logging
import socket
import threading
import time
from typing import Any, Dict, Iterator, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from v2sync.app.stats.manager import SEPARATOR, Counter
from v2sync.app.stats.system import gc_collections, rss_bytes
from v2sync.common.errors import TransportError
from v2sync.infra.conf.model import MetricsConfig

log = logging.getLogger(__name__)
JOIN_TIMEOUT = 2.0
# A scrape's request is one short GET sent at once: 5 s is ample on any network, and bounds
# how long a client that never finishes it holds a thread and a socket.
REQUEST_DEADLINE = 5.0
# Prometheus scrapes with one connection at a time; 16 leaves room for several scrapers and
# a curl, and caps the threads and fds a flood of connections can take from the proxy.
MAX_CONNECTIONS = 16


class RoutingDecisions:
    """How many connections routing sent to each outbound (the dispatcher calls it)."""

    def __init__(self) -> None:
        self.counts: Dict[str, Counter] = {}
        self._lock = threading.Lock()

    def __call__(self, tag: str) -> None:
        counter = self.counts.get(tag)
        if counter is None:
            with self._lock:
                counter = self.counts.setdefault(tag, Counter())
        counter.add(1)


class V2SyncCollector(Collector):
    def __init__(self, instance: Any, routed: RoutingDecisions):
        self.instance = instance
        self.routed = routed
        self.started = time.monotonic()

    def collect(self) -> Iterator[Any]:
        yield from self._traffic()
        yield from self._system()
        yield from self._handlers()

    def _traffic(self) -> Iterator[Any]:
        families = {
            direction: CounterMetricFamily(f"v2ray_traffic_{direction}_bytes",
                                           f"Bytes counted {direction} (app/stats counters)",
                                           labels=["dimension", "target"])
            for direction in ("uplink", "downlink")}
        stats = self.instance.stats
        for name, value in (stats.query() if stats is not None else ()):
            parts = name.split(SEPARATOR)
            if len(parts) == 4 and parts[3] in families:
                families[parts[3]].add_metric([parts[0], parts[1]], value)
        yield from families.values()

    def _system(self) -> Iterator[Any]:
        yield GaugeMetricFamily("v2ray_up", "Whether the figures could be read", value=1)
        yield GaugeMetricFamily("v2ray_uptime_seconds", "Seconds since the process started",
                                value=int(time.monotonic() - self.started))
        yield GaugeMetricFamily("v2ray_goroutines", "Threads (Go: goroutines)",
                                value=threading.active_count())
        rss = rss_bytes()
        yield GaugeMetricFamily("v2ray_memstats_alloc_bytes", "Resident memory", value=rss)
        yield GaugeMetricFamily("v2ray_memstats_sys_bytes", "Resident memory", value=rss)
        yield GaugeMetricFamily("v2ray_memstats_num_gc", "Cyclic GC collections",
                                value=gc_collections())

    def _handlers(self) -> Iterator[Any]:
        live = GaugeMetricFamily("v2sync_inbound_connections",
                                 "Connections an inbound holds now", labels=["inbound"])
        failed = CounterMetricFamily("v2sync_inbound_handshake_failures",
                                     "Handshakes that failed (bad auth, garbage, timeout)",
                                     labels=["inbound"])
        for handler in list(self.instance.inbounds.handlers):
            name = handler.tag or handler.config.protocol
            live.add_metric([name], handler.live_count())
            failed.add_metric([name], handler.handshake_failures.value())
        routed = CounterMetricFamily("v2sync_routing_decisions",
                                     "Connections routing sent to each outbound",
                                     labels=["outbound"])
        for tag, counter in list(self.routed.counts.items()):
            routed.add_metric([tag], counter.value())
        yield from (live, failed, routed)


class _DeadlineReader(io.RawIOBase):
    """A socket's reads under one absolute deadline: a per-read timeout alone would let a
    client that trickles a byte every few seconds hold its thread for ever."""

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("metrics: request not received in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Handler(WSGIRequestHandler):
    """prometheus-client's silent handler, its request read under ``REQUEST_DEADLINE``."""

    timeout = REQUEST_DEADLINE  # set on the socket before the first read: also bounds writes

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # drops the socket's reference to the plain reader only
        deadline = time.monotonic() + REQUEST_DEADLINE
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing (a scrape every few seconds is not news)."""


class _BoundedServer(ThreadingWSGIServer):
    """At most ``MAX_CONNECTIONS`` handler threads. One past the cap is closed at once
    rather than queued: the accept loop never waits, and Prometheus simply retries at its
    next scrape, while a wait would let a flood delay every connection behind it."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            threading.Thread(target=self.process_request_thread, args=(request, client_address),
                             name="metrics-conn", daemon=True).start()
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Timeouts and resets from clients: expected, so no traceback on stderr (a collector
        # that fails is reported by wsgiref's handler, not here).
        log.debug("metrics: connection from %s ended", client_address, exc_info=True)


def serve(listen: str, port: int, registry: CollectorRegistry
          ) -> Tuple[_BoundedServer, threading.Thread]:
    """``start_http_server`` with the bounds above: the server and its accept thread."""
    infos = socket.getaddrinfo(listen, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]  # as prometheus-client picks it (IPv6 needs AF_INET6)

    class Server(_BoundedServer):
        address_family = family

    server = make_server(str(sockaddr[0]), port, make_wsgi_app(registry), Server,
                         handler_class=_Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread


class MetricsServer:
    def __init__(self, instance: Any, config: MetricsConfig):
        self.config = config
        self.registry = CollectorRegistry()
        routed = RoutingDecisions()
        instance.dispatcher.on_routed = routed
        self.registry.register(V2SyncCollector(instance, routed))
        self.registry.register(ProcessCollector(registry=None))
        self._server: Optional[_BoundedServer] = None
        self._thread: Any = None

    def start(self) -> None:
        try:
            self._server, self._thread = serve(self.config.listen, self.config.port,
                                               self.registry)
        except OSError as e:
            raise TransportError(f"metrics: cannot listen on {self.config.listen}:"
                                 f"{self.config.port}: {e}") from e
        log.info("metrics on http://%s:%d/metrics", self.config.listen, self.port)

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else 0

    def stop_listening(self) -> None:
        """Stop serving and free the port (a reload binds it again at once)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(JOIN_TIMEOUT)
            self._server = None
