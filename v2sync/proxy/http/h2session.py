"""HTTP/2 CONNECT tunnels on the ``h2`` package (RFC 7540 §8.3): both ends.

Only the ``h2*`` modules import ``h2``, and the HTTP proxy imports them only when a TLS
connection negotiates ``h2``: the HTTP outbound (4.34 ``proxy/http/client.go`` tunnels
over HTTP/2 CONNECT then, one cached connection per server: ``h2client``) and the HTTP
inbound (``h2server``; beyond 4.34, whose inbound speaks HTTP/1 only, so that a 4.34 HTTP
outbound over TLS works).

One ``H2Session`` per connection: one thread reads it and hands each stream's data to its
``Tunnel`` (an unbounded pipe, bounded in fact by the flow-control window we grant: the
data is acknowledged only once the tunnel's consumer has taken it, so a stalled tunnel
stops its own sender, not the connection). The h2 state machine sits behind one lock; its
output goes out through a second lock that no thread waits for while holding the first.
A thread that finds the writer busy leaves its bytes for the writer to send (``_flush``),
so the reader never blocks behind a sender stuck on a full socket.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from v2sync.common.errors import (PipeClosed, PipeInterrupted, RemoteProtocolError,
                                  TransportError, V2SyncError)
from v2sync.common.protocol.http2 import FrameGuard
from v2sync.common.signal import ActivityTimer, TimerWheel
from v2sync.proxy.relay import run_relay
from v2sync.transport.internet.conn import Connection
from v2sync.transport.link import Link
from v2sync.transport.pipe import EOF, UNLIMITED, Pipe

log = logging.getLogger(__name__)

# What a tunnel may hold unread: the window each stream is granted (RFC 7540 §6.9.2).
STREAM_WINDOW = 1024 * 1024
# What all of a connection's tunnels may hold unread. A server's connection is one
# client's. A client's (the HTTP outbound's, one per proxy server) carries every user's
# tunnels: each download a user stops reading keeps its stream's window, and 16 of them
# took a 16 MiB window whole, so no other user's tunnel on it got a byte more (found by a
# review). As Go's transport (4.34's), 1 GiB: the streams' windows bound what is held.
CONNECTION_WINDOW = 16 * 1024 * 1024
CLIENT_CONNECTION_WINDOW = 1 << 30
READ_SIZE = 256 * 1024
WINDOW_RECHECK = 1.0  # seconds between looks at a stream waiting for flow-control window
# Output queued while the writer is stuck on a peer that does not read. The reader's own
# answers (PING and SETTINGS acks) grew it without bound: a PING flood took 29 MiB in 10 s
# and a core (found by a review). Past this, the connection is closed (Go's server closes
# one after 10,000 queued control frames).
MAX_QUEUED_OUTPUT = 1024 * 1024
Headers = List[Tuple[str, str]]


class Tunnel:
    """One CONNECT stream: data in (``recv``), headers once they arrive."""

    def __init__(self, session: "H2Session", stream_id: int):
        self.session = session
        self.stream_id = stream_id
        self.recv = Pipe(UNLIMITED, f"h2-{stream_id}")
        self.headers: Optional[Headers] = None
        self.padding = 0       # flow-controlled bytes received beyond the data (padding)
        self.remote_closed = False

    def header(self, name: str) -> Optional[str]:
        return next((v for k, v in self.headers or () if k == name), None)


# Streams one client may hold open at once on the server side (h2's own default, which the
# settings above would otherwise drop: each CONNECT stream holds two threads, so one TLS
# connection could start thousands). Go's HTTP/2 server allows 250.
SERVER_MAX_STREAMS = 100


class _Connection(h2.connection.H2Connection):
    """h2 closes its state machine at any GOAWAY, and refuses the rest of the same read.
    A graceful one (NO_ERROR: a server draining, as nginx's and Go's do on a reload) lets
    the streams the peer took go on (RFC 9113 §6.8), as Go's transport lets them, so the
    state is opened again right there, and what h2 had to send is kept; all were cut
    (found by a review). ``H2Session`` then opens no new stream on it."""

    def _receive_goaway_frame(self, frame):
        if frame.error_code != h2.errors.ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        pending = self.data_to_send()
        result = super()._receive_goaway_frame(frame)
        self._data_to_send += pending  # h2's own buffer: the GOAWAY cleared it
        states = h2.connection.ConnectionState
        self.state_machine.state = (states.CLIENT_OPEN if self.config.client_side
                                    else states.SERVER_OPEN)
        return result


class H2Session:
    def __init__(self, conn: Connection, client_side: bool, name: str,
                 on_request: Optional[Callable[[Tunnel], None]] = None):
        config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8",
                                           validate_inbound_headers=True)
        self.h2 = _Connection(config)
        # Frames over h2's size limit and header blocks over 64 KiB are refused as their
        # frame headers arrive, before h2 buffers or decodes them (common.protocol.http2).
        self._guard = FrameGuard() if client_side else FrameGuard.for_server()
        self.conn = conn
        self.name = name
        self.on_request = on_request   # server side: a new CONNECT stream (in the reader)
        self._state = threading.Lock()
        self._changed = threading.Condition(self._state)  # windows, headers, closing
        self._writing = threading.Lock()
        self._outbox: List[bytes] = []
        self._queued = 0  # bytes in the outbox
        self.tunnels: Dict[int, Tunnel] = {}
        self.closed = False
        self._ending = False  # the reader stops after this batch (a GOAWAY either way)
        self.draining = False  # the peer's graceful GOAWAY: its streams go on, no new ones
        self.idle_timer: Optional[ActivityTimer] = None
        self.arm_idle: Callable[[], None] = lambda: None  # set by whoever watches idleness

    # -- setup and the reading thread ----------------------------------------------------
    def start(self) -> None:
        with self._state:
            self.h2.local_settings = h2.settings.Settings(
                client=self.h2.config.client_side,
                initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                                h2.settings.SettingCodes.ENABLE_PUSH: 0}
                if self.h2.config.client_side else
                {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                 h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: SERVER_MAX_STREAMS})
            self.h2.initiate_connection()
            window = CLIENT_CONNECTION_WINDOW if self.h2.config.client_side else CONNECTION_WINDOW
            self.h2.increment_flow_control_window(window - 65535)
            self._take_output()
        self._flush(wait=True)

    def run_reader(self) -> None:
        """Read the connection until it ends; then every tunnel on it is interrupted."""
        try:
            while True:
                data = self.conn.read(READ_SIZE)
                if not data:
                    break
                self._guarded(data)
                with self._state:
                    events = self.h2.receive_data(data)
                    for event in events:
                        self._on_event(event)
                    self._take_output()
                    self._changed.notify_all()
                    if self._queued > MAX_QUEUED_OUTPUT:
                        raise RemoteProtocolError(f"{self._queued} bytes of answers queued to "
                                                  "a peer that does not read")
                self._flush(wait=False)
                if self._ending:
                    break
        except h2.exceptions.ProtocolError as e:
            log.info("%s: HTTP/2 protocol error: %s", self.name, e)
            self._goodbye()  # the GOAWAY h2 queued
        except RemoteProtocolError as e:
            log.info("%s: HTTP/2 connection closed: %s", self.name, e)
        except V2SyncError as e:
            log.debug("%s: HTTP/2 connection ended: %s", self.name, e)
        finally:
            self.close()

    def _guarded(self, data: bytes) -> None:
        """Feed the frame guard; past a limit, a GOAWAY says why and RemoteProtocolError
        ends the reader."""
        try:
            self._guard.feed(data)
        except RemoteProtocolError:
            with self._state:
                self.h2.close_connection(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
            self._goodbye()
            raise

    def _goodbye(self) -> None:
        """Send what h2 queued last (a GOAWAY), unless a writer is stuck meanwhile."""
        with self._state:
            self._take_output()
        self._flush(wait=False)

    def _on_event(self, event) -> None:
        """Called with the state lock held: never blocks."""
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)
            return
        tunnel = self.tunnels.get(getattr(event, "stream_id", 0) or 0)
        if tunnel is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            tunnel.headers = _headers(event)
        elif isinstance(event, h2.events.DataReceived):
            tunnel.padding += event.flow_controlled_length - len(event.data)
            if event.data:
                tunnel.recv.write(event.data)
            elif event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, tunnel.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            tunnel.remote_closed = True
            tunnel.recv.close()
        elif isinstance(event, h2.events.StreamReset):
            tunnel.remote_closed = True
            tunnel.recv.interrupt()

    def _on_goaway(self, event) -> None:
        """With NO_ERROR the streams the peer took go on (``_Connection``) and new ones go
        to a new connection. Any other code ends the connection."""
        if event.error_code != h2.errors.ErrorCodes.NO_ERROR:
            self._ending = True
            return
        self.draining = True
        for stream_id, tunnel in self.tunnels.items():
            if stream_id > (event.last_stream_id or 0):  # never taken: safe to try again
                tunnel.recv.interrupt()

    def _on_request(self, event) -> None:
        tunnel = Tunnel(self, event.stream_id)
        tunnel.headers = _headers(event)
        self.tunnels[event.stream_id] = tunnel
        if self.on_request is None:
            self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self.on_request(tunnel)

    def terminate(self, code: "h2.errors.ErrorCodes") -> None:
        """With the state lock held (in the reader): a GOAWAY, then the end."""
        self.h2.close_connection(code)
        self._ending = True

    # -- output ----------------------------------------------------------------------------
    def _take_output(self) -> None:
        """With the state lock held: move what h2 has to send into the outbox."""
        data = self.h2.data_to_send()
        if data:
            self._outbox.append(data)
            self._queued += len(data)

    def _flush(self, wait: bool) -> None:
        """Send the outbox. ``wait`` False: if another thread is sending, it sends ours."""
        while True:
            if not self._writing.acquire(blocking=wait):
                return
            try:
                while True:
                    with self._state:
                        parts, self._outbox, self._queued = self._outbox, [], 0
                    if not parts:
                        break
                    self.conn.write_parts(parts)
            finally:
                self._writing.release()
            with self._state:
                if not self._outbox:
                    return

    # -- what tunnels do -------------------------------------------------------------------
    def open(self, headers: Headers) -> Tunnel:
        """Client side: a new CONNECT stream."""
        with self._state:
            if self.closed:
                raise TransportError(f"{self.name}: HTTP/2 connection closed")
            stream_id = self.h2.get_next_available_stream_id()
            tunnel = Tunnel(self, stream_id)
            self.tunnels[stream_id] = tunnel
            self.h2.send_headers(stream_id, headers)
            self._take_output()
        self._flush(wait=True)
        return tunnel

    def can_open(self) -> bool:
        with self._state:
            return (not self.closed and not self.draining and
                    self.h2.open_outbound_streams < self.h2.remote_settings.max_concurrent_streams)

    def wait_headers(self, tunnel: Tunnel, deadline: float) -> Headers:
        with self._state:
            while tunnel.headers is None:
                if self.closed or tunnel.remote_closed:
                    raise RemoteProtocolError(f"{self.name}: stream ended before its response")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(f"{self.name}: no response to CONNECT in time")
                self._changed.wait(left)
            return tunnel.headers

    def respond(self, tunnel: Tunnel, status: int, extra: Sequence[Tuple[str, str]] = (),
                end: bool = False
                ) -> None:
        headers = [(":status", str(status)), *extra]
        self._call(lambda: self.h2.send_headers(tunnel.stream_id, headers, end_stream=end))

    def send(self, tunnel: Tunnel, data: bytes, deadline: Optional[float] = None) -> None:
        """Send ``data`` on the tunnel, waiting for flow-control window as needed (until
        ``deadline``, if given: the first payload goes before any relay timer watches)."""
        view = memoryview(data)
        while view:
            with self._state:
                size = self._wait_window(tunnel, len(view), deadline)
                self.h2.send_data(tunnel.stream_id, bytes(view[:size]))
                self._take_output()
            view = view[size:]
            self._flush(wait=True)

    def _wait_window(self, tunnel: Tunnel, want: int, deadline: Optional[float]) -> int:
        while True:
            if self.closed:
                raise PipeInterrupted(f"{self.name}: HTTP/2 connection closed")
            try:
                window = self.h2.local_flow_control_window(tunnel.stream_id)
            except (h2.exceptions.StreamClosedError, KeyError):
                raise PipeInterrupted(f"{self.name}: stream {tunnel.stream_id} closed") from None
            size = min(want, window, self.h2.max_outbound_frame_size)
            if size > 0:
                return size
            # Woken by a WINDOW_UPDATE, a reset or the close; the slice only bounds the
            # wait (the relay's idle timer resets a stream whose peer never opens it).
            left = WINDOW_RECHECK if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"{self.name}: no flow-control window in time")
            self._changed.wait(min(left, WINDOW_RECHECK))

    def end(self, tunnel: Tunnel) -> None:
        self._call(lambda: self.h2.end_stream(tunnel.stream_id))

    def reset(self, tunnel: Tunnel) -> None:
        """Never waits for the writer: a relay's abort comes here from the timer wheel's
        thread, and a writer stuck on a peer that stopped reading held it, so no timer of
        the process fired any more (found by a review). The writer, or the next flush,
        sends the RST_STREAM."""
        self._call(lambda: self.h2.reset_stream(tunnel.stream_id,
                                                h2.errors.ErrorCodes.CANCEL),
                   quiet=True, wait=False)
        tunnel.recv.interrupt()

    def ack(self, tunnel: Tunnel, size: int) -> None:
        """The tunnel's consumer took ``size`` bytes: the peer may send that much more."""
        def acknowledge() -> None:
            padding, tunnel.padding = tunnel.padding, 0
            self.h2.acknowledge_received_data(size + padding, tunnel.stream_id)
        self._call(acknowledge, quiet=True)

    def forget(self, tunnel: Tunnel) -> bool:
        """The tunnel's relay is over; True if no tunnel is left on the connection."""
        with self._state:
            self.tunnels.pop(tunnel.stream_id, None)
            self._changed.notify_all()
            done = self.draining and not self.tunnels
            if not done:
                return not self.tunnels
        self.close()  # a draining connection's last tunnel: nothing more will use it
        return True

    def _call(self, fn: Callable[[], None], quiet: bool = False, wait: bool = True) -> None:
        with self._state:
            try:
                if self.closed:
                    raise PipeInterrupted(f"{self.name}: HTTP/2 connection closed")
                fn()
                self._changed.notify_all()  # a reset or an end can end someone's wait
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError,
                    PipeInterrupted) as e:
                if quiet:
                    return
                raise PipeInterrupted(f"{self.name}: {e}") from e
            self._take_output()
        self._flush(wait=wait)

    def close(self) -> None:
        """End the connection and every tunnel on it (idempotent)."""
        with self._state:
            if self.closed:
                return
            self.closed = True
            tunnels = list(self.tunnels.values())
            self._changed.notify_all()
        for tunnel in tunnels:
            tunnel.recv.interrupt()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.conn.abort()


def relay_tunnel(ctx, name: str, policy, session: H2Session, tunnel: Tunnel, link: Link
                 ) -> Optional[BaseException]:
    """link <-> tunnel, as a relay's thread pair with the level's timeouts."""

    def abort() -> None:
        session.reset(tunnel)
        link.interrupt()

    def request(timer) -> None:
        while True:
            chunks = link.reader.read_all()
            if chunks is EOF:
                session.end(tunnel)
                return
            timer.update()
            session.send(tunnel, chunks[0] if len(chunks) == 1 else b"".join(chunks))
            del chunks

    def response(timer) -> None:
        while True:
            chunk = tunnel.recv.read()
            if chunk is EOF:
                break
            timer.update()
            try:
                link.writer.write(chunk)
            except (PipeClosed, PipeInterrupted):
                session.reset(tunnel)
                raise
            session.ack(tunnel, len(chunk))
        link.writer.close()

    try:
        return run_relay(ctx, name, policy, None, abort, request, response)
    finally:
        if session.forget(tunnel):
            session.arm_idle()


class IdleWatch:
    """Closes a session that has had no tunnel for ``timeout`` seconds (the level's
    connIdle), and at once at shutdown, when the timer wheel expires every timer."""

    def __init__(self, session: H2Session, timers: TimerWheel, timeout: float):
        self.session = session
        self.timers = timers
        self.timeout = timeout

    def arm(self) -> None:
        self.session.idle_timer = self.timers.new_timer(self.timeout, self._expired)

    def _expired(self) -> None:
        session = self.session
        with session._state:
            idle = not session.tunnels
        if idle or self.timers.expiring:
            session.close()
        else:
            self.arm()  # tunnels are open: each arms the watch again when it ends


def _headers(event) -> Headers:
    """The event's header pairs: header_encoding="utf-8" makes h2 hand them over as str."""
    return cast(Headers, list(event.headers))
