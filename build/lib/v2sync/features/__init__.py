"""Feature interfaces (v2ray ``features/``): what the Instance wires together.

Only ``typing.Protocol`` classes live here; implementations are in ``app/`` and ``proxy/``.
A router (a later issue) plugs in by implementing ``routing.Router``.
"""
