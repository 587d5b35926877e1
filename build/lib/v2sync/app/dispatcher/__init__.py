"""The dispatcher (v2ray ``app/dispatcher``): session + destination -> link -> outbound.

For each connection it builds a link of two bounded pipes, asks the router (if any) which
outbound takes it, logs the access line, and starts the outbound in a tracked thread.
Sniffing (a later issue) hooks in here, before routing, as in v2ray ``default.go``.
"""
