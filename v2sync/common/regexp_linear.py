"""Searching in time linear in the text, as Go's ``regexp`` (RE2) does, for the patterns
``v2sync.common.regexp`` writes.

Python's ``re`` backtracks: ``^(.+\\.)*example\\.com$`` against ``a.a.a. ... x`` takes
exponential time, and ``re`` holds the GIL throughout, so one crafted domain in a SOCKS
request or a TLS ClientHello stalled the whole process (26 labels: 2.6 s; each two more
labels, four times longer). 4.34 answers the same name at once.

So the pattern is run as Thompson's automaton instead: ``re``'s own parser reads the
translated pattern, a small program of character tests, splits and assertions is built from
it, and the search keeps the set of program positions alive at each character, never
retrying one. Sets met before are cached with their successor for each (context,
character), so a warm pattern costs one dict lookup per character: a lazy DFA, bounded by
``MAX_CACHED`` states and links and emptied when full, as RE2 does.

Only the forms the translator writes are taken: literals, classes, groups, alternation,
counted and open repeats, ``\\A``, ``\\Z``, ``(?m:^)``, ``(?m:$)`` and one-character
lookarounds (Go's ``\\b`` and ``\\B``). Anything else is ``NotLinear``.
"""
from __future__ import annotations

import bisect
import sys
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

if sys.version_info >= (3, 11):
    from re import _constants as sre_constants
    from re import _parser as sre_parse
else:
    import sre_constants
    import sre_parse

MAX_CACHED = 20_000
_MULTILINE = sre_constants.SRE_FLAG_MULTILINE
_UNBOUNDED = sre_constants.MAXREPEAT

# Program instructions: (kind, argument, next positions).
CHAR, SPLIT, ASSERT, MATCH = range(4)
# Assertions: text start/end, line start/end ((?m)), a look at the character before/after.
BOT, EOT, BOL, EOL, BEHIND, AHEAD = range(6)

Instruction = Tuple[int, object, Tuple[int, ...]]
State = FrozenSet[int]


class NotLinear(ValueError):
    """A pattern form this matcher does not run (the translator never writes one)."""


class CharSet:
    """Code points in sorted, disjoint ranges, or outside them when ``negated``."""

    __slots__ = ("_starts", "_ends", "_negated")

    def __init__(self, ranges: Sequence[Tuple[int, int]], negated: bool = False):
        merged = sorted(ranges)
        self._starts = [lo for lo, _ in merged]
        self._ends = [hi for _, hi in merged]
        self._negated = negated

    def __contains__(self, char: str) -> bool:
        cp = ord(char)
        i = bisect.bisect_right(self._starts, cp) - 1
        return (i >= 0 and cp <= self._ends[i]) != self._negated


class _Builder:
    """Builds the program back to front: each piece is given the position that follows
    it and returns its own first position."""

    def __init__(self) -> None:
        self.program: List[Instruction] = []
        self.behind: List[CharSet] = []  # the look-behind tests, by index

    def add(self, kind: int, arg: object, nexts: Tuple[int, ...]) -> int:
        self.program.append((kind, arg, nexts))
        return len(self.program) - 1

    def sequence(self, items: Sequence[Tuple[Any, Any]], then: int, flags: int) -> int:
        for op, av in reversed(items):
            then = self.item(str(op), av, then, flags)
        return then

    def item(self, op: str, av: Any, then: int, flags: int) -> int:
        if op in _CHAR_OPS:
            return self.add(CHAR, _CHAR_OPS[op](av, flags), (then,))
        handler = _NODE_OPS.get(op)
        if handler is None:
            raise NotLinear(f"pattern form {op} is not run in linear time")
        return handler(self, av, then, flags)

    def branch(self, av: Any, then: int, flags: int) -> int:
        _, alternatives = av
        return self.add(SPLIT, None, tuple(self.sequence(a, then, flags) for a in alternatives))

    def group(self, av: Any, then: int, flags: int) -> int:
        _, add_flags, del_flags, items = av
        return self.sequence(items, then, (flags | add_flags) & ~del_flags)

    def repeat(self, av: Any, then: int, flags: int) -> int:
        low, high, items = av
        if high == _UNBOUNDED:
            then = self.loop(items, then, flags)
        else:
            for _ in range(high - low):
                then = self.add(SPLIT, None, (self.sequence(items, then, flags), then))
        for _ in range(low):
            then = self.sequence(items, then, flags)
        return then

    def loop(self, items: Sequence[Tuple[Any, Any]], then: int, flags: int) -> int:
        """``items*``: a split whose first way runs ``items`` and comes back to it."""
        loop = self.add(SPLIT, None, ())
        body = self.sequence(items, loop, flags)
        self.program[loop] = (SPLIT, None, (body, then))
        return loop

    def at(self, av: Any, then: int, flags: int) -> int:
        code = str(av)
        multiline = bool(flags & _MULTILINE)
        kinds = {"AT_BEGINNING_STRING": BOT, "AT_END_STRING": EOT,
                 "AT_BEGINNING": BOL if multiline else BOT}
        if code == "AT_END" and multiline:
            return self.add(ASSERT, (EOL, None), (then,))
        if code not in kinds:
            raise NotLinear(f"anchor {code} is not run in linear time")
        return self.add(ASSERT, (kinds[code], None), (then,))

    def look(self, av: Any, then: int, flags: int, negated: bool) -> int:
        direction, items = av
        if len(items) != 1 or str(items[0][0]) not in _CHAR_OPS:
            raise NotLinear("only one-character lookarounds are run in linear time")
        op, arg = items[0]
        test = _CHAR_OPS[str(op)](arg, flags)
        if direction > 0:
            return self.add(ASSERT, (AHEAD, (test, negated)), (then,))
        self.behind.append(test)
        return self.add(ASSERT, (BEHIND, (len(self.behind) - 1, negated)), (then,))


def _literal(av: Any, _flags: int) -> CharSet:
    return CharSet([(int(av), int(av))])


def _not_literal(av: Any, _flags: int) -> CharSet:
    return CharSet([(int(av), int(av))], negated=True)


def _any(_av: Any, flags: int) -> CharSet:
    if flags & sre_constants.SRE_FLAG_DOTALL:
        return CharSet([], negated=True)
    return CharSet([(10, 10)], negated=True)


def _in(av: Any, _flags: int) -> CharSet:
    ranges: List[Tuple[int, int]] = []
    negated = False
    for op, arg in av:
        name = str(op)
        if name == "NEGATE":
            negated = True
        elif name == "LITERAL":
            ranges.append((arg, arg))
        elif name == "RANGE":
            ranges.append(arg)
        else:
            raise NotLinear(f"class item {name} is not run in linear time")
    return CharSet(ranges, negated)


_CHAR_OPS: Dict[str, Callable[[object, int], CharSet]] = {
    "LITERAL": _literal, "NOT_LITERAL": _not_literal, "ANY": _any, "IN": _in}
_NODE_OPS: Dict[str, Callable[..., int]] = {
    "BRANCH": _Builder.branch, "SUBPATTERN": _Builder.group, "MAX_REPEAT": _Builder.repeat,
    "MIN_REPEAT": _Builder.repeat, "AT": _Builder.at,
    "ASSERT": lambda b, av, then, flags: b.look(av, then, flags, False),
    "ASSERT_NOT": lambda b, av, then, flags: b.look(av, then, flags, True)}


class _DState:
    """One state of the lazy DFA: the program positions alive (before their closure) and
    what the assertions may ask of the character just read; ``next`` maps each character
    read from here to the state after it (a step that matched is not kept)."""

    __slots__ = ("threads", "before", "next", "ends")

    def __init__(self, threads: State, before: Tuple[bool, ...]):
        self.threads = threads
        self.before = before
        self.next: Dict[str, _DState] = {}
        self.ends: Optional[bool] = None  # whether the text may end here with a match


class LinearPattern:
    """``search(text)``: True where Go's ``MatchString`` is true, else None (as ``re``'s
    ``search`` gives a falsy None), in time linear in ``text``."""

    def __init__(self, pattern: str):
        parsed: Any = sre_parse.parse(pattern)  # RecursionError when nested too deeply
        builder = _Builder()
        match = builder.add(MATCH, None, ())  # position 0
        self.pattern = pattern
        self._start = builder.sequence(parsed.data, match, parsed.state.flags)
        self._program = builder.program
        self._behind = builder.behind
        self._states: Dict[Tuple[State, Tuple[bool, ...]], _DState] = {}
        self._transitions = 0  # links made between states since the cache started again
        self._initial = self._state(frozenset(), self._context_of(None))

    def search(self, text: str) -> Optional[bool]:
        state = self._initial
        for char in text:
            found = state.next.get(char)
            if found is None:
                found = self._step(state, char)
                if found is None:
                    return True
            state = found
        if state.ends is None:
            state.ends = 0 in self._closure(state, None)
        return True if state.ends else None

    def _context_of(self, char: Optional[str]) -> Tuple[bool, ...]:
        """What the assertions may ask of the character before a position."""
        return (char is None, char == "\n", *(char is not None and char in t for t in self._behind))

    def _state(self, threads: State, before: Tuple[bool, ...]) -> _DState:
        key = (threads, before)
        state = self._states.get(key)
        if state is None:
            if len(self._states) + self._transitions >= MAX_CACHED:
                self._forget()
            state = self._states.setdefault(key, _DState(threads, before))
        return state

    def _forget(self) -> None:
        """Start the cache again, as RE2 does when its DFA outgrows its budget; the old
        states' links are cut so they go without the cyclic collector."""
        old, self._states = self._states, {}
        self._transitions = 0
        for state in old.values():
            state.next = {}
        self._initial = self._state(frozenset(), self._context_of(None))

    def _step(self, state: _DState, char: str) -> Optional[_DState]:
        """The state after ``char``, remembered; None when the search matched."""
        alive = self._closure(state, char)
        if 0 in alive:
            return None
        program = self._program
        threads = frozenset(program[pc][2][0] for pc in alive
                            if program[pc][0] == CHAR and char in program[pc][1])  # type: ignore[operator]
        found = self._state(threads, self._context_of(char))
        if self._transitions < MAX_CACHED:  # else the next new state starts the cache again
            state.next[char] = found
            self._transitions += 1
        return found

    def _closure(self, state: _DState, after: Optional[str]) -> Dict[int, None]:
        """The positions reachable from ``state`` and a new start without reading a
        character (a search may begin at every position), before ``after`` (None: the
        end of the text). Key 0 is MATCH."""
        seen: Dict[int, None] = {}
        stack = [self._start, *state.threads]
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen[pc] = None
            kind, arg, nexts = self._program[pc]
            if kind == SPLIT or kind == ASSERT and self._holds(arg, state.before, after):
                stack.extend(nexts)
        return seen

    def _holds(self, arg: Any, before: Tuple[bool, ...], after: Optional[str]) -> bool:
        kind, detail = arg
        if kind == BOT:
            return before[0]
        if kind == EOT:
            return after is None
        if kind == BOL:
            return before[0] or before[1]
        if kind == EOL:
            return after is None or after == "\n"
        if kind == BEHIND:
            index, negated = detail
            return before[2 + index] != negated
        test, negated = detail
        return (after is not None and after in test) != negated
