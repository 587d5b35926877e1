"""TCP header disguises (v2ray ``transport/internet/headers``): pure codecs, plus their conns."""
