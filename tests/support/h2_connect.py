"""An in-test HTTP/2 CONNECT proxy on the ``h2`` package and the stdlib ``ssl`` (ALPN h2):
the far end for the HTTP outbound's HTTP/2 path. 4.34's HTTP inbound speaks HTTP/1 only,
so no v2ray can play this part; this server shares no code with v2sync's HTTP/2 side.

One thread per connection runs a select loop over the TLS socket and each tunnel's upstream
socket; upstream bytes are read only while the stream's send window is open. It counts
connections and streams so a test can see a cached connection being reused.
"""
from __future__ import annotations

import base64
import select
import socket
import ssl
import threading
from typing import Dict, List, Optional, Tuple

import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame

POLL = 0.05
JOIN_TIMEOUT = 5.0
CONNECTION_LIFETIME = 60.0  # a connection left open by a test ends by itself
READ = 16384


class H2ConnectProxy:
    def __init__(self, cert_file: str, key_file: str, auth: Optional[Tuple[str, str]] = None,
                 stream_window: Optional[int] = None, goaway_on_data: bool = False):
        """``stream_window``: the INITIAL_WINDOW_SIZE it grants, never opened further (0: a
        client can send no data at all). ``goaway_on_data``: on a stream's first data, once
        it is passed on, a graceful GOAWAY (NO_ERROR, that stream the last taken), written
        beside h2 (which would close its own state), and the streams go on."""
        self.stream_window = stream_window
        self.goaway_on_data = goaway_on_data
        self.goaways = 0
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        self.context.set_alpn_protocols(["h2"])
        self.expected_auth = ("Basic " + base64.b64encode(":".join(auth).encode()).decode()
                              if auth else None)
        self.connections = 0
        self.streams = 0
        self.refused = 0
        self.requests: List[List[Tuple[str, str]]] = []  # each request's headers, in order
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port = self._listener.getsockname()[1]

    def __enter__(self) -> "H2ConnectProxy":
        self._spawn(self._accept_loop, "h2-proxy-accept")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(JOIN_TIMEOUT)
        self._listener.close()
        assert not any(t.is_alive() for t in self._threads), "h2 proxy thread still running"

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=False)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            self.connections += 1
            self._spawn(self._serve, f"h2-proxy-{self.connections}", sock)

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10.0)
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        session = _Session(self, tls)
        try:
            session.run(self._stop)
        except (ssl.SSLError, OSError):
            pass
        finally:
            session.close()


class _Session:
    def __init__(self, proxy: H2ConnectProxy, tls: ssl.SSLSocket):
        self.proxy = proxy
        self.tls = tls
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.upstreams: Dict[int, socket.socket] = {}
        self.goaway_sent = False

    def run(self, stop: threading.Event) -> None:
        if self.proxy.stream_window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=False, initial_values={
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.proxy.stream_window})
        self.conn.initiate_connection()
        self.flush()
        deadline = threading.Event()
        timer = threading.Timer(CONNECTION_LIFETIME, deadline.set)
        timer.start()
        try:
            while not stop.is_set() and not deadline.is_set():
                if not self.step():
                    return
        finally:
            timer.cancel()

    def step(self) -> bool:
        readers = [self.tls] + [up for sid, up in self.upstreams.items() if self.window(sid) > 0]
        ready = [self.tls] if self.tls.pending() else select.select(readers, [], [], POLL)[0]
        for sock in ready:
            if sock is self.tls:
                data = self.tls.recv(65536)
                if not data or not self.on_events(self.conn.receive_data(data)):
                    return False
            else:
                self.from_upstream(sock)
        self.flush()
        return True

    def window(self, sid: int) -> int:
        try:
            return self.conn.local_flow_control_window(sid)
        except Exception:  # the stream is closed
            return 0

    def on_events(self, events) -> bool:
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.proxy.requests.append([(str(k), str(v)) for k, v in event.headers])
                self.on_request(event.stream_id, dict(event.headers))
            elif isinstance(event, h2.events.DataReceived):
                up = self.upstreams.get(event.stream_id)
                if up is not None and event.data:
                    up.sendall(event.data)
                if self.proxy.stream_window is None:
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
                if self.proxy.goaway_on_data and not self.goaway_sent:
                    self.goaway_sent = True
                    self.proxy.goaways += 1
                    self.flush()
                    self.tls.sendall(hyperframe.frame.GoAwayFrame(
                        0, last_stream_id=event.stream_id, error_code=0).serialize())
            elif isinstance(event, h2.events.StreamEnded):
                up = self.upstreams.get(event.stream_id)
                if up is not None:
                    up.shutdown(socket.SHUT_WR)
            elif isinstance(event, h2.events.StreamReset):
                self.drop(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                return False
        return True

    def on_request(self, sid: int, headers: Dict[str, str]) -> None:
        self.proxy.streams += 1
        if headers.get(":method") != "CONNECT":
            self.refuse(sid, "405")
            return
        expected = self.proxy.expected_auth
        if expected and headers.get("proxy-authorization") != expected:
            self.refuse(sid, "407")
            return
        host, _, port = headers.get(":authority", "").rpartition(":")
        try:
            up = socket.create_connection((host.strip("[]"), int(port)), timeout=10.0)
        except (OSError, ValueError):
            self.refuse(sid, "502")
            return
        self.upstreams[sid] = up
        self.conn.send_headers(sid, [(":status", "200")])

    def refuse(self, sid: int, status: str) -> None:
        self.proxy.refused += 1
        self.conn.send_headers(sid, [(":status", status)], end_stream=True)

    def from_upstream(self, up: socket.socket) -> None:
        sid = next((s for s, u in self.upstreams.items() if u is up), None)
        if sid is None:
            return  # its stream was reset by the events read just before, in this step
        size = min(self.window(sid), self.conn.max_outbound_frame_size, READ)
        try:
            data = up.recv(size)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.conn.send_data(sid, data)
        else:
            self.conn.end_stream(sid)
            self.drop(sid)

    def drop(self, sid: int) -> None:
        up = self.upstreams.pop(sid, None)
        if up is not None:
            up.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.tls.sendall(data)

    def close(self) -> None:
        for sid in list(self.upstreams):
            self.drop(sid)
        self.tls.close()
