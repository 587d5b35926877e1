"""Shadowsocks (SIP004 AEAD and "none"), inbound and outbound, as v2ray 4.34 speaks it.

``encoding`` is the pure codec (methods, key derivation use, TCP chunk streams, datagrams);
``config`` turns 4.34's JSON into frozen settings; ``inbound`` and ``outbound`` run it over
connections. 4.34 has no stream ciphers, so neither has v2sync: an unknown method is a
config error, as in 4.34.
"""
