"""Infrastructure around the proxy core (v2ray ``infra/``).

Only ``infra.conf`` lives here: turning JSON files into the frozen config objects the runtime
is built from. Nothing in ``infra`` opens a socket or starts a thread.
"""
