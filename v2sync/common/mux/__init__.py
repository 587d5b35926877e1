"""Mux.cool: many proxied connections over one (v2ray ``common/mux``).

- ``encoding``: the frame codec, pure.
- ``session``: what both ends share: the session table, the serialised frame writer, the
  frame reader over a pipe, and the handling of Keep/End/KeepAlive frames.
- ``server``: wraps an inbound's dispatcher; a dispatch to ``v1.mux.cool`` becomes a
  ``ServerWorker`` that dispatches each sub-connection with the inbound's session details.
- ``client``: an outbound with ``mux`` enabled hands its links to a ``ClientManager``, which
  carries them as sub-connections of a few workers, each one connection of the outbound.

Threads: one thread reads a mux connection's frames and hands each frame's data to its
sub-connection's pipe; every sub-connection sends its own data as frames from its own
thread; frames go through one lock-guarded writer. Like 4.34, the reading thread blocks
while a sub-connection's pipe is full (a reader that stopped), so the others wait until
that sub-connection's own inactivity timer ends it: see README "Mux.cool" for the figures.
"""
