"""Clients of a running proxy (v2ray ``infra/control``, v2ctl): ``v2sync api`` and
``v2sync top``. They talk to the gRPC API of v2sync or of v2ray 4.34 alike."""
