"""Trojan (v2ray ``proxy/trojan``): hex(SHA224(password)) CRLF, a SOCKS-style request,
CRLF, then the raw stream, over TLS.

``encoding`` is the pure codec, ``config`` the JSON settings, ``inbound``/``outbound`` the
handlers; users, UDP framing and fallbacks are shared with VLESS (``common.protocol.users``,
``common.protocol.packets``, ``proxy.fallback``).
"""
