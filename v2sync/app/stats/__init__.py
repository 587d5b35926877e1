"""Traffic counters (v2ray ``app/stats``).

A ``StatsManager`` exists only when the config has a ``stats`` section. Counters are named as
4.34 names them (``inbound>>>TAG>>>traffic>>>uplink``, ``outbound>>>…``,
``user>>>EMAIL>>>traffic>>>downlink``) and are fed on the relay path:

- inbound counters by a ``CountingConnection`` around the accepted connection (after TLS /
  WebSocket, as 4.34's ``StatCouterConnection`` wraps what the transport hub hands over);
- outbound counters by the same wrapper around each dialed connection (``StreamClient``);
- user counters by the dispatcher's pipes (``CountingPipe``), payload bytes only.

The API (``app.commander``) reads and resets them; the Prometheus endpoint
(``app.metrics``) exports them.
"""
