"""The only package in v2sync that opens sockets (v2ray ``transport/internet``).

Proxies never call ``socket`` themselves: inbounds receive a ``Connection`` from a listener,
outbounds ask ``dial_tcp`` / ``dial_udp`` for one. Stream transports (TLS, WebSocket, ...)
wrap a ``Connection`` and keep its interface.
"""
