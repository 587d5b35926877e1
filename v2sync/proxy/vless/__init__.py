"""VLESS (v2ray ``proxy/vless``): a plain header naming the user by UUID and the target,
then the raw stream, over a transport that brings its own security (TLS).

``encoding`` is the pure codec, ``config`` the JSON settings, ``inbound``/``outbound`` the
handlers. The inbound shares its user table with Trojan (``common.protocol.users``), its
UDP framing with Trojan (``common.protocol.packets``) and its fallbacks with Trojan
(``proxy.fallback``).
"""
