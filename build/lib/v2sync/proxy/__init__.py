"""One package per protocol (v2ray ``proxy/``).

Each has ``config.py`` (frozen settings from JSON), ``encoding.py`` (a pure codec that never
touches a socket) and ``inbound.py`` / ``outbound.py`` (the socket-facing handlers).
``relay`` holds the copy-pair-with-timer shape that every handler's data phase shares.
"""
