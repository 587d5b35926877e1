"""Stepping a task's steps (``common.task.Steps``) by hand in a test."""
from typing import Any, List, Tuple


def step_by_hand(steps: Any) -> Tuple[Any, List[Any]]:
    """Run ``steps`` to its end without arming a wait: (what it returned, the waits it
    yielded). For steps that never need a wait to come true to go on."""
    waits = []
    try:
        while True:
            waits.append(next(steps))
    except StopIteration as done:
        return done.value, waits
