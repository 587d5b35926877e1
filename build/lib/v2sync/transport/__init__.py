"""How bytes move between handlers.

``pipe``  a bounded, byte-counted queue with V2Ray's close/interrupt semantics
``link``  the two pipes of one proxied connection, seen from each end
``internet`` is the only package in v2sync that opens sockets (TCP, UDP; TLS and WebSocket later).
"""
