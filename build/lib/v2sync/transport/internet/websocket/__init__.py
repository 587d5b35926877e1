"""WebSocket transport (v2ray ``transport/internet/websocket``); pure codecs: frames, handshake."""
