"""freedom: the outbound that connects straight to the target (v2ray ``proxy/freedom``)."""
