"""Share links: the ``vmess://``, ``vless://``, ``trojan://`` and ``ss://`` text a provider
hands out, and the subscriptions that bundle them (V2Ray's core never read them:
v2ray/v2ray-core#1517).

A link is text, not a stream, so the codecs here take and return whole strings; like the
protocol codecs they never touch a socket. The pieces:

- ``model``        ``ShareLink``, one server as a link describes it, and what v2sync can honour
- ``vmess_json``   v2rayN's ``vmess://`` (base64 of a JSON object, version 2)
- ``url``          the community URL form of XTLS/Xray-core#91 for ``vless://``, ``trojan://``
                   and ``vmess://`` (VMess AEAD)
- ``shadowsocks``  SIP002 ``ss://``
- ``links``        one entry point per direction (``parse_link``, ``format_link``) and
                   subscriptions (``parse_subscription``)
- ``outbounds``    a ShareLink to a 4.34 outbound, and back from a config's outbounds and
                   inbounds (``v2sync link export``)
- ``client``       the whole client config ``v2sync run LINK`` and ``v2sync link import`` use

Every problem is a ``ConfigError`` whose path names the part of the link at fault
(``links[0].port``); a field v2sync cannot honour (mKCP, gRPC, REALITY, a plugin...) is an
error that names it, never silently dropped.
"""
