"""VMess (v2ray ``proxy/vmess``): the pure codec and crypto layer; sockets live elsewhere.

* ``ids``        UUID text, command keys, alter IDs, ``VMessUser`` and ``Security``.
* ``body``       chunk readers/writers for every security and option (request and response).
* ``aead``       the AEAD header: AuthID, sealed request header, sealed response header.
* ``encoding``   command section and response header codecs; ``ClientSession`` (outbound
  side) and ``ServerSession`` (inbound side) that tie keys, headers and bodies together.
* ``validator``  the server's ``UserTable`` (AuthID and legacy auth lookups, replay filter,
  taint fuses, drain size), ``SessionHistory`` and ``decode_request_header``.

Wire compatibility target: V2Ray 4.34 as packaged by Debian (notes §0, §1). A client picks
the AEAD header when ``alterId == 0``; a server tries AEAD first, then the legacy table.
"""
