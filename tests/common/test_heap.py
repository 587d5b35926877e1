"""The process's heap policy (common/heap.py): the startup heap frozen, full collections
spaced out."""
import gc

import pytest

from v2sync.common import heap


@pytest.fixture
def python_defaults():
    """Python's thresholds to start from; the test process's own put back after."""
    thresholds = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_settle_freezes_the_heap_and_spaces_full_collections(python_defaults):
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (700, 10, heap.FULL_AFTER)
    heap.refreeze()  # a reload: the same policy again
    assert gc.get_threshold() == (700, 10, heap.FULL_AFTER)


@pytest.mark.parametrize("mine", [(2000, 20, 500), (700, 10, 0)])
def test_settle_keeps_a_program_s_own_setting(python_defaults, mine):
    gc.set_threshold(*mine)  # raised already; no full collection by count
    heap.settle()
    assert gc.get_threshold() == mine


def _full_collections_while_growing(tracked: int) -> int:
    before = gc.get_stats()[2]["collections"]
    kept = [[] for _ in range(tracked)]  # a burst's live objects: each list is tracked
    ran = gc.get_stats()[2]["collections"] - before
    del kept
    return ran


def test_a_burst_of_live_objects_runs_no_full_collection(python_defaults):
    # 200,000 tracked objects kept alive, as 1,000 connections hold: ~28 middle
    # collections. With the startup heap frozen and Python's threshold2 (10) the quarter
    # rule is met at once, so full collections run; settled, none does.
    gc.collect()
    gc.freeze()
    assert _full_collections_while_growing(200_000) >= 1
    gc.unfreeze()
    heap.settle()
    assert _full_collections_while_growing(200_000) == 0
