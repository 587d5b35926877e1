"""Wire pieces several protocols share (v2ray ``common/protocol``).

V2Ray writes the (address, port) codec once with options (``AddressParser``) and still
repeats UDP framing and user tables per protocol; v2sync keeps each such piece here, once,
for every protocol that needs it. Everything in this package is pure: no sockets.
"""
