"""Tracked threads and the relay's thread pair (v2ray ``common/task/task.go``).

Every thread v2sync starts is named, belongs to a ``ThreadGroup`` and is joined on shutdown:
a thread nobody joins is a leak in a thread-per-connection server.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List, Optional, Set

log = logging.getLogger(__name__)

# Small stacks let a 32-bit Raspberry Pi (3 GiB of address space) hold 1,000 connections of
# four threads each; v2sync's deepest call chains are a few dozen frames.
THREAD_STACK_SIZE = 256 * 1024


def set_thread_stack_size() -> None:
    try:
        threading.stack_size(THREAD_STACK_SIZE)
    except (ValueError, RuntimeError):  # platform refuses: keep its default
        log.debug("could not set thread stack size")


class ThreadGroup:
    """Starts named threads, remembers the live ones, joins them with a deadline."""

    def __init__(self, name: str):
        self.name = name
        self._threads: Set[threading.Thread] = set()
        self._lock = threading.Lock()

    def spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=self._wrap(target), name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:  # "can't start new thread": out of memory or limits
            with self._lock:
                self._threads.discard(thread)
            raise
        return thread

    def _wrap(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception:  # the one broad catch per thread entry point
                log.exception("thread %s failed", threading.current_thread().name)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        return run

    def live(self) -> List[threading.Thread]:
        with self._lock:
            return list(self._threads)

    def join(self, timeout: float) -> bool:
        """Join every live thread within ``timeout`` seconds in total; True if none is left."""
        deadline = time.monotonic() + timeout
        for thread in self.live():
            if thread is threading.current_thread():
                continue
            thread.join(max(deadline - time.monotonic(), 0.0))
        return not [t for t in self.live() if t is not threading.current_thread()]


def run_pair(
    group: ThreadGroup,
    name: str,
    background: Callable[[], None],
    foreground: Callable[[], None],
    on_error: Callable[[BaseException], None],
    join_timeout: float,
) -> Optional[BaseException]:
    """Run ``background`` in a new thread and ``foreground`` here; join within ``join_timeout``.

    The first exception of either side calls ``on_error`` (which must unblock the other side,
    e.g. by interrupting the link and aborting the connection) and is returned.
    """
    errors: List[BaseException] = []
    lock = threading.Lock()

    def guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            with lock:
                first = not errors
                errors.append(exc)
            if first:
                on_error(exc)

    thread = group.spawn(name, lambda: guarded(background))
    guarded(foreground)
    thread.join(join_timeout)
    if thread.is_alive():
        on_error(TimeoutError(f"{name} did not finish in {join_timeout}s"))
        thread.join(join_timeout)
    return errors[0] if errors else None
