"""Inbound and outbound handler managers (v2ray ``app/proxyman``).

An inbound *handler* owns listeners (one per port) and runs its protocol's proxy on each
accepted connection; an outbound handler runs its proxy for each dispatched link.
"""
