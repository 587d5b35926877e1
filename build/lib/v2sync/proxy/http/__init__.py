"""HTTP proxy (v2ray ``proxy/http``): CONNECT tunnels and plain forward proxying."""
