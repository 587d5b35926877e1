"""JSON values nested deeper than ``repr`` can go: config messages must name them, not
quote them (``common.errors.shown``)."""
from typing import Any

# JSON may nest 10,000 levels (as Go reads it); repr() fails near 1,000.
DEPTH = 5_000


def deep_json(depth: int = DEPTH) -> Any:
    """``depth`` levels of alternating arrays and objects around null, an array outermost."""
    value: Any = None
    for level in reversed(range(depth)):
        value = {"a": value} if level % 2 else [value]
    return value
