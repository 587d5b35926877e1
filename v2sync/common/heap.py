"""Keep the cyclic garbage collector off what lives as long as the process.

Why: CPython's collector runs by allocation counts, and a full collection walks every
tracked object: the modules, the config, the routing tables, and every live connection's
objects. A burst of 1,000 connections grows the heap fast enough to trigger full
collections in the middle of it, each holding the GIL while it walks. Measured on 2 cores
(1,000 concurrent 64 KiB echoes through SOCKS5 -> freedom, three bursts): 6 full
collections took 0.25 s of the 2.3 s of CPU; with what was alive at startup frozen
(``gc.freeze``: moved to a generation no collection visits), the same 6 took 0.07 s.

Nothing a connection makes should need the collector at all: relay objects are freed by
reference counting when the connection ends (``common.task._Pair`` and
``FinishOnFirstUse`` say why they are written the way they are), and
``tests/scenarios/test_no_cyclic_garbage.py`` checks every protocol chain for cycles.

A frozen object that later becomes cyclic garbage is never collected: a config retired by
a reload. So once a retired Instance is gone, ``refreeze`` thaws everything, collects, and
freezes what is left.
"""
from __future__ import annotations

import gc


def settle() -> None:
    """Freeze what is alive now; call once the Instance has started."""
    gc.collect()
    gc.freeze()


def refreeze() -> None:
    """Collect what was frozen and is now garbage (a retired Instance), freeze the rest."""
    gc.unfreeze()
    settle()
