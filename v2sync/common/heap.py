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

Freezing has a side effect on when full collections run: besides waiting for
``threshold2`` collections of the middle generation, one runs only once the objects
promoted since the last exceed a quarter of the old generation, and with the startup heap
frozen that generation is small. A connection's objects (~150 tracked per process) outlive
the young collections while it runs, so a burst promotes ~100,000 of them and met that
rule at every 10th middle collection (Python's ``threshold2``). Measured with 6 bursts of
1,000 64 KiB echoes through SOCKS5 -> freedom (2 cores): 9-11 full collections of 16-142
ms each, 55% of the collector's time, found 82 objects garbage in all. ``settle`` sets
``threshold2`` to FULL_AFTER: one full collection over the 6 bursts, the collector's time
344-568 -> 194-206 ms, its longest pause ~40 -> ~6 ms, a burst ~10% faster. What it delays
is little: no connection leaves cyclic garbage. A larger first threshold (10,000) gained
nothing (each young collection then walked more live objects), nor did a larger second.
"""
from __future__ import annotations

import gc

FULL_AFTER = 100  # middle-generation collections per full one, at least (Python: 10)


def settle() -> None:
    """Freeze what is alive now and space full collections out; call once the Instance has
    started. A program that set ``threshold2`` higher, or to 0 (no full collection by
    count), keeps its setting."""
    gc.collect()
    gc.freeze()
    young, middle, full = gc.get_threshold()
    if 0 < full < FULL_AFTER:
        gc.set_threshold(young, middle, FULL_AFTER)


def refreeze() -> None:
    """Collect what was frozen and is now garbage (a retired Instance), freeze the rest."""
    gc.unfreeze()
    settle()
