"""``QuietestFirst``: a full UDP table's eviction picks exactly what a scan of the whole
table would, with one scan per EVICTION_BATCH evictions (socket-free)."""
from __future__ import annotations

import gc
import random
import weakref
from typing import Dict, List

from v2sync.app.dispatcher import udp
from v2sync.app.dispatcher.udp import EVICTION_BATCH, QuietestFirst

TABLE = 1024
ROUNDS = 600


class Entry:
    def __init__(self, last: float):
        self.last = last


class CountingActivity:
    """``last_activity`` that counts its calls: a scan calls it once per entry."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, entry: Entry) -> float:
        self.calls += 1
        return entry.last


def _brute_quietest(table: Dict[int, Entry]) -> int:
    return min(table, key=lambda key: table[key].last)


def test_each_pop_is_the_quietest_while_entries_come_go_and_get_busy() -> None:
    rng = random.Random(19)
    table = {key: Entry(rng.random()) for key in range(TABLE)}
    quietest: QuietestFirst[int, Entry] = QuietestFirst(lambda entry: entry.last)
    clock = 1.0
    next_key = TABLE
    for _ in range(ROUNDS):
        for _ in range(rng.randrange(4)):  # some entries get busy (some of them kept ones)
            clock += 0.001
            table[rng.choice(list(table))].last = clock
        if rng.random() < 0.2:  # one ends on its own
            del table[rng.choice(list(table))]
        if rng.random() < 0.1:  # one is replaced under the same key (a new session)
            clock += 0.001
            table[rng.choice(list(table))] = Entry(clock)
        expected = _brute_quietest(table)
        key, entry = quietest.pop(table)
        assert key == expected and key not in table
        clock += 0.001
        table[next_key] = Entry(clock)  # the new source that took the room
        next_key += 1


def test_a_burst_of_evictions_scans_once_per_batch() -> None:
    activity = CountingActivity()
    table = {key: Entry(float(key)) for key in range(TABLE)}
    quietest: QuietestFirst[int, Entry] = QuietestFirst(activity)
    clock = float(TABLE)
    evictions = 4 * EVICTION_BATCH
    for expected in range(evictions):  # a flood of one-datagram sources
        assert quietest.pop(table)[0] == expected
        clock += 1
        table[TABLE + expected] = Entry(clock)
    scans = evictions // EVICTION_BATCH
    # A scan reads every entry once; each pop reads its kept entry's activity once more.
    assert activity.calls <= scans * TABLE + evictions
    assert activity.calls > (scans - 1) * TABLE  # it did scan: the count is not vacuous


def test_every_pop_scans_again_when_each_kept_entry_got_busy() -> None:
    table = {key: Entry(float(key)) for key in range(8)}
    quietest: QuietestFirst[int, Entry] = QuietestFirst(lambda entry: entry.last)
    assert quietest.pop(table)[0] == 0
    for entry in table.values():
        entry.last += 100.0  # all busy since the scan: nothing kept may be taken
    table[1].last = 150.0
    assert quietest.pop(table)[0] == 2


def test_kept_entries_are_not_held_alive() -> None:
    table = {key: Entry(float(key)) for key in range(TABLE)}
    quietest: QuietestFirst[int, Entry] = QuietestFirst(lambda entry: entry.last)
    quietest.pop(table)  # keeps EVICTION_BATCH - 1 entries for later
    ended: List[weakref.ref] = []
    for key in range(1, EVICTION_BATCH):
        ended.append(weakref.ref(table.pop(key)))  # they end on their own
    gc.collect()
    assert all(ref() is None for ref in ended)
    assert quietest.pop(table)[0] == EVICTION_BATCH  # and are skipped


def test_the_batch_is_small_next_to_the_table() -> None:
    assert 1 < udp.EVICTION_BATCH <= udp.MAX_UDP_SESSIONS // 8
