"""Logging with v2ray 4.34's ``log`` semantics (v2ray ``app/log``).

Two streams: the *error* log (the ``v2sync`` logger hierarchy, level from ``loglevel``) and
the *access* log (one line per accepted or rejected connection). Each goes to stdout, a file,
or nowhere. The CLI supplies the console handler (rich on a terminal, plain otherwise).
"""
