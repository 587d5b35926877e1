"""SOCKS 4, 4a and 5 (v2ray ``proxy/socks``): inbound server with CONNECT and UDP ASSOCIATE."""
