"""SIGHUP / ``systemctl reload``: the config re-read without dropping live connections.

The new config is loaded and built first; a config with errors leaves everything as it
was. Otherwise the running Instance stops listening, a new one binds the same ports and
starts, and the old one retires in a thread of its own (``Instance.retire``): its live
connections go on under the config they started with until they end, its ``connIdle``
has passed, or the process stops. Traffic counters (``stats``) carry over: the new
Instance takes the old one's, so the API's figures go on and the retired connections
count where the API sees them. Should the new one fail to start (a port another program
took meanwhile), the previous config is started again; if even that fails the process
has nothing to serve and the caller exits.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List, Optional

from v2sync.app.log.setup import check_files
from v2sync.common.errors import ConfigError, V2SyncError
from v2sync.core import Instance
from v2sync.infra.conf.model import Config

log = logging.getLogger("v2sync.reload")

# A UDP listener's thread closes its socket at its next poll (UdpListener.POLL_INTERVAL,
# 0.25 s, for the workers that are not woken at close), so a port the old instance had may
# be bound a little after stop_listening: a failed bind is retried this long.
REBIND_WAIT = 1.0
REBIND_POLL = 0.02


def reload(current: Instance, load: Callable[[], Config], on_config: Callable[[Config], None],
           stop: threading.Event, retiring: List[threading.Thread]) -> Optional[Instance]:
    """The Instance serving after a SIGHUP: a new one from ``load()``, or, when that config
    is bad, ``current`` unchanged. None if nothing could be started (``current`` closed).
    ``on_config`` applies the serving config's process-wide settings (its log)."""
    log.warning("SIGHUP: reloading the config")
    try:
        config = load()
        fresh = Instance(config, stats=current.stats)
        check_files(config.log)
    except ConfigError as e:
        log.error("reload refused, still serving the previous config:\n%s", e.render())
        return current
    except Exception as e:  # a bug: say so and keep serving
        log.error("reload failed, still serving the previous config: internal error: %s: %s",
                  type(e).__name__, e)
        return current
    try:
        # A port only the new config has, and another program holds: refused before the
        # running listeners close (each port would otherwise pause a second, then fall back).
        fresh.inbounds.check_free(set(current.inbounds.held()))
    except V2SyncError as e:
        log.error("reload refused, still serving the previous config: %s", e)
        return current
    current.stop_listening()
    try:
        started = _start_when_free(fresh)
    except Exception as e:  # a bug too: the listeners are closed, so serve the old again
        log.error("the reloaded config failed to start (%s); restarting the previous one",
                  _described(e))
        restarted = _restart(current)
        if restarted is None:
            current.close()
            return None
        started, config = restarted, current.config
    on_config(config)
    thread = threading.Thread(target=current.retire, args=(stop,), name="retired-instance",
                              daemon=True)
    thread.start()
    retiring[:] = [t for t in retiring if t.is_alive()] + [thread]
    log.warning("reloaded; connections made before go on under the previous config")
    return started


def _restart(previous: Instance) -> Optional[Instance]:
    try:
        return _start_when_free(Instance(previous.config, stats=previous.stats))
    except Exception as e:
        log.error("the previous config failed to start again: %s", _described(e))
        return None


def _described(error: Exception) -> str:
    """A start's failure as the log says it: a bug (not a V2SyncError) is named as one."""
    if isinstance(error, V2SyncError):
        return str(error)
    return f"internal error: {type(error).__name__}: {error}"


def _start_when_free(instance: Instance) -> Instance:
    """``instance`` started; a failed bind is retried, each time with a fresh Instance
    from the same config (a failed start closes it), until REBIND_WAIT has passed."""
    deadline = time.monotonic() + REBIND_WAIT
    while True:
        try:
            instance.start()
            return instance
        except V2SyncError:
            if time.monotonic() > deadline:
                raise
        time.sleep(REBIND_POLL)
        instance = Instance(instance.config, stats=instance.stats)
