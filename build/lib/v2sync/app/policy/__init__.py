"""Per-level connection policy (v2ray ``app/policy``): timeouts and pipe buffer sizes."""
