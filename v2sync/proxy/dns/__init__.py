"""The ``dns`` outbound (v2ray ``proxy/dns``): the DNS-hijack half of a gateway.

Routing sends DNS traffic here (typically a dokodemo-door on port 53, or a rule on port 53).
A and AAAA queries are answered by the built-in DNS (``app/dns``); every other message is
passed on to the original destination, or to the server the settings name.
"""
