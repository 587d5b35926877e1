"""Go's regular expressions (RE2 syntax, as v2ray 4.34 compiles ``regexp:`` rules) run by ``re``.

``compile_go(pattern)`` parses ``pattern`` the way Go's ``regexp/syntax`` does (``regexp.Compile``:
Perl flags, UTF-8 text) and writes a Python pattern that finds a match (``search``) exactly where
Go's ``MatchString`` does. Nothing is left to Python's reading of the syntax: every literal is
escaped, every class is written out as explicit ranges, every anchor in a form that ignores
Python's flags, so ``re``'s defaults (Unicode ``\\d``/``\\w``/``\\s``, ``$`` before a final
newline, its own case folding) never leak in.

Go's rules, as implemented here:

- ``^``/``$`` are the start/end of the text unless ``(?m)``; ``\\A``, ``\\z``; ``\\Z`` is invalid.
- ``\\d \\s \\w \\b \\B`` and the 14 POSIX classes (``[[:alpha:]]``, ``[[:^digit:]]``) are ASCII.
- ``(?i)`` folds with Unicode simple case folding: for ASCII that adds KELVIN SIGN to k/K and
  LONG S to s/S. Non-ASCII folding needs Go's Unicode 13 tables, which v2sync does not carry:
  a non-ASCII character under ``(?i)`` is accepted only if it has no case at all.
- ``{`` that does not begin ``{n}``, ``{n,}`` or ``{n,m}`` is a literal; counts above 1000, and
  nested counts whose product exceeds 1000, are refused; ``a**`` and ``a{2}{3}`` are refused.
- Flags are ``i m s U`` only; lookaround, backreferences, ``(?P=name)``, ``(?#...)``, ``\\C``,
  ``\\pX`` other than ``Any`` (v2sync has no Unicode 13 tables) and atomic forms are refused.
- ``\\Q...\\E``, octal ``\\123``, ``\\x41``, ``\\x{10FFFF}`` and ``\\a \\f \\t \\n \\r \\v``.

Go reads text as UTF-8 and sees each invalid byte as U+FFFD; v2sync decodes domains with
``surrogateescape``, which turns each invalid byte into U+DC80..U+DCFF. So a set that holds
U+FFFD also holds those surrogates, and no set holds any other surrogate.

A refusal is an ``re.error`` (callers already catch it): Go's own words where Go refuses,
"... is not supported by v2sync" where Go accepts a pattern v2sync cannot express exactly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, NoReturn, Optional, Protocol, Sequence, Tuple

from v2sync.common.regexp_linear import LinearPattern, NotLinear

Ranges = List[Tuple[int, int]]

MAX_RUNE = 0x10FFFF
MAX_REPEAT = 1000
REPLACEMENT = 0xFFFD
SURROGATES = (0xD800, 0xDFFF)
ESCAPED_BYTES = (0xDC80, 0xDCFF)  # surrogateescape's stand-ins for invalid UTF-8 bytes
# Non-ASCII ranges under (?i) are checked character by character; past this many, refuse.
FOLD_SCAN_LIMIT = 0x10000

FOLD, MULTILINE, DOTALL, UNGREEDY = 1, 2, 4, 8
_FLAG_BITS = {"i": FOLD, "m": MULTILINE, "s": DOTALL, "U": UNGREEDY}

_DIGIT: Ranges = [(0x30, 0x39)]
_UPPER: Ranges = [(0x41, 0x5A)]
_LOWER: Ranges = [(0x61, 0x7A)]
_WORD: Ranges = [*_DIGIT, *_UPPER, (0x5F, 0x5F), *_LOWER]
_PERL: Dict[str, Ranges] = {"d": _DIGIT, "s": [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)],
                            "w": _WORD}
_POSIX: Dict[str, Ranges] = {
    "alnum": [*_DIGIT, *_UPPER, *_LOWER], "alpha": [*_UPPER, *_LOWER], "ascii": [(0, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)], "cntrl": [(0, 0x1F), (0x7F, 0x7F)], "digit": _DIGIT,
    "graph": [(0x21, 0x7E)], "lower": _LOWER, "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)], "upper": _UPPER, "word": _WORD,
    "xdigit": [*_DIGIT, (0x41, 0x46), (0x61, 0x66)],
}
# ASCII letters whose simple case-fold orbit leaves ASCII (Go's unicode.SimpleFold).
_FOLD_EXTRA = {0x4B: 0x212A, 0x6B: 0x212A, 0x53: 0x17F, 0x73: 0x17F}
_C_ESCAPES = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}
_OCTAL = "01234567"
_HEX = "0123456789abcdefABCDEF"
_ASCII_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Names Go 1.19 (Unicode 13.0.0) knows after \p: general categories and scripts. They only
# choose the message: every one but Any is refused, as v2sync has no Unicode 13 tables.
GO_CATEGORIES = frozenset(
    "C Cc Cf Co Cs L Ll Lm Lo Lt Lu M Mc Me Mn N Nd Nl No P Pc Pd Pe Pf Pi Po Ps "
    "S Sc Sk Sm So Z Zl Zp Zs".split())
GO_SCRIPTS = frozenset("""
Adlam Ahom Anatolian_Hieroglyphs Arabic Armenian Avestan Balinese Bamum Bassa_Vah Batak Bengali
Bhaiksuki Bopomofo Brahmi Braille Buginese Buhid Canadian_Aboriginal Carian Caucasian_Albanian
Chakma Cham Cherokee Chorasmian Common Coptic Cuneiform Cypriot Cyrillic Deseret Devanagari
Dives_Akuru Dogra Duployan Egyptian_Hieroglyphs Elbasan Elymaic Ethiopic Georgian Glagolitic
Gothic Grantha Greek Gujarati Gunjala_Gondi Gurmukhi Han Hangul Hanifi_Rohingya Hanunoo Hatran
Hebrew Hiragana Imperial_Aramaic Inherited Inscriptional_Pahlavi Inscriptional_Parthian
Javanese Kaithi Kannada Katakana Kayah_Li Kharoshthi Khitan_Small_Script Khmer Khojki Khudawadi
Lao Latin Lepcha Limbu Linear_A Linear_B Lisu Lycian Lydian Mahajani Makasar Malayalam Mandaic
Manichaean Marchen Masaram_Gondi Medefaidrin Meetei_Mayek Mende_Kikakui Meroitic_Cursive
Meroitic_Hieroglyphs Miao Modi Mongolian Mro Multani Myanmar Nabataean Nandinagari New_Tai_Lue
Newa Nko Nushu Nyiakeng_Puachue_Hmong Ogham Ol_Chiki Old_Hungarian Old_Italic Old_North_Arabian
Old_Permic Old_Persian Old_Sogdian Old_South_Arabian Old_Turkic Oriya Osage Osmanya
Pahawh_Hmong Palmyrene Pau_Cin_Hau Phags_Pa Phoenician Psalter_Pahlavi Rejang Runic Samaritan
Saurashtra Sharada Shavian Siddham SignWriting Sinhala Sogdian Sora_Sompeng Soyombo Sundanese
Syloti_Nagri Syriac Tagalog Tagbanwa Tai_Le Tai_Tham Tai_Viet Takri Tamil Tangut Telugu Thaana
Thai Tibetan Tifinagh Tirhuta Ugaritic Vai Wancho Warang_Citi Yezidi Yi Zanabazar_Square
""".split())

_W = "[0-9A-Za-z_]"
_WORD_BOUNDARY = f"(?:(?<={_W})(?!{_W})|(?<!{_W})(?={_W}))"      # Go's \b: ASCII words
_NOT_WORD_BOUNDARY = f"(?:(?<={_W})(?={_W})|(?<!{_W})(?!{_W}))"  # and \B, true on "" too
_NOTHING = "[^\\x00-\\U0010ffff]"  # an empty class: Python has no "[]"


class Searcher(Protocol):
    def search(self, text: str) -> object:
        """Truthy where Go's ``MatchString`` is true, else None."""


def compile_go(pattern: str) -> Searcher:
    """``pattern`` read as Go's ``regexp.Compile`` reads it; use ``.search`` (unanchored).
    It runs in time linear in the text, as Go's does (``regexp_linear``): ``re`` would
    backtrack, and a crafted name could hold the process for minutes."""
    text = translate(pattern)
    try:
        return LinearPattern(text)
    except RecursionError:  # re's parser recurses per group; Go allows 1000 levels
        raise re.error("expression nests too deeply for v2sync") from None
    except NotLinear as e:  # never for what translate() writes (tests/common/test_regexp.py)
        raise re.error(f"{e} in v2sync") from None


def translate(pattern: str) -> str:
    """The Python pattern that means what the Go pattern ``pattern`` means."""
    return _Translator(pattern).run()


def fail(message: str, expr: str) -> NoReturn:
    """Go's refusal, in Go's words (``regexp/syntax`` ``Error.Error``)."""
    raise re.error(f"{message}: `{expr}`")


def unsupported(what: str) -> NoReturn:
    raise re.error(f"{what} is not supported by v2sync (Go accepts it)")


# --------------------------------------------------------------------------- code point sets

def normalize(ranges: Sequence[Tuple[int, int]]) -> Ranges:
    """Sorted, merged, non-adjacent ranges."""
    merged: Ranges = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def negate(ranges: Sequence[Tuple[int, int]]) -> Ranges:
    """The complement in [0, MAX_RUNE] (as Go's negateClass)."""
    out: Ranges = []
    start = 0
    for lo, hi in normalize(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_RUNE:
        out.append((start, MAX_RUNE))
    return out


def _as_decoded(ranges: Sequence[Tuple[int, int]]) -> Ranges:
    """Go never sees a surrogate, and sees an invalid byte as U+FFFD (see the module doc)."""
    out = negate([*negate(ranges), SURROGATES])
    if any(lo <= REPLACEMENT <= hi for lo, hi in out):
        out.append(ESCAPED_BYTES)
    return normalize(out)


def escape(cp: int) -> str:
    char = chr(cp)
    if char in _ASCII_ALNUM:
        return char
    if cp < 0x100:
        return f"\\x{cp:02x}"
    return f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def _class_body(ranges: Ranges) -> str:
    return "".join(escape(lo) if lo == hi else f"{escape(lo)}-{escape(hi)}" for lo, hi in ranges)


def emit_set(ranges: Sequence[Tuple[int, int]]) -> str:
    """A Python atom matching one character of ``ranges``, whatever flags are in force."""
    wanted = _as_decoded(ranges)
    if not wanted:
        return _NOTHING
    if len(wanted) == 1 and wanted[0][0] == wanted[0][1]:
        return escape(wanted[0][0])
    complement = negate(wanted)
    if len(complement) < len(wanted):
        return f"[^{_class_body(complement)}]"
    return f"[{_class_body(wanted)}]"


def _caseless(cp: int) -> bool:
    char = chr(cp)
    return char.lower() == char.upper() == char.casefold() == char.title() == char


def fold(ranges: Sequence[Tuple[int, int]]) -> Ranges:
    """``ranges`` closed under Go's simple case folding (``(?i)``); refuses cased non-ASCII."""
    out: Ranges = []
    for lo, hi in ranges:
        for cp in range(lo, min(hi, 0x7F) + 1):
            char = chr(cp)
            out.extend((ord(c), ord(c)) for c in (char.lower(), char.upper()))
            if cp in _FOLD_EXTRA:
                out.append((_FOLD_EXTRA[cp], _FOLD_EXTRA[cp]))
        if hi >= 0x80:
            out.append(_fold_non_ascii(max(lo, 0x80), hi))
    return normalize([*ranges, *out])


def _fold_non_ascii(lo: int, hi: int) -> Tuple[int, int]:
    if hi - lo >= FOLD_SCAN_LIMIT:
        unsupported(f"case-insensitive matching of the range \\x{{{lo:X}}}-\\x{{{hi:X}}}")
    for cp in range(lo, hi + 1):
        if not _caseless(cp):
            unsupported(f"case-insensitive matching of non-ASCII {chr(cp)!r} (U+{cp:04X})")
    return lo, hi


# --------------------------------------------------------------------------- the parser

PLAIN, REPEATED, ZERO_WIDTH = 0, 1, 2


@dataclass
class _Atom:
    text: str
    kind: int = PLAIN
    need: int = 0  # the least n for which Go's repeatIsValid(atom, n) holds


@dataclass
class _Frame:
    """An open group: the flags to restore at ``)``, finished alternatives, the current one."""

    saved_flags: int
    alternatives: List[str] = field(default_factory=list)
    atoms: List[_Atom] = field(default_factory=list)
    need: int = 0

    def close_alternative(self) -> None:
        self.alternatives.append("".join(atom.text for atom in self.atoms))
        self.need = max([self.need, *(atom.need for atom in self.atoms)])
        self.atoms = []


class _Translator:
    """One left-to-right pass in the order of Go's ``parse`` (regexp/syntax/parse.go)."""

    def __init__(self, pattern: str):
        if any(SURROGATES[0] <= ord(c) <= SURROGATES[1] for c in pattern):
            fail("invalid UTF-8", pattern)  # the text Go gets from JSON never holds these
        self.src = pattern
        self.pos = 0
        self.flags = 0
        self.frames = [_Frame(0)]
        self.last_repeat: Optional[int] = None  # where the previous token, if a repeat, began

    def run(self) -> str:
        while self.pos < len(self.src):
            start = self.pos
            was_repeat = self.step()
            self.last_repeat = start if was_repeat else None
        if len(self.frames) > 1:
            fail("missing closing )", self.src)
        root = self.frames[0]
        root.close_alternative()
        return "|".join(root.alternatives)

    def push(self, text: str, kind: int = PLAIN) -> None:
        self.frames[-1].atoms.append(_Atom(text, kind))

    def step(self) -> bool:
        """Consume one token; True if it was a repetition operator."""
        char = self.src[self.pos]
        if char in "*+?{":
            return self.repeat()
        handler = {"(": self.open_group, "|": self.bar, ")": self.close_group, "[": self.char_class,
                   "\\": self.backslash}.get(char)
        if handler is not None:
            handler()
            return False
        self.pos += 1
        if char == "^":
            self.push("(?m:^)" if self.flags & MULTILINE else "\\A", ZERO_WIDTH)
        elif char == "$":
            self.push("(?m:$)" if self.flags & MULTILINE else "\\Z", ZERO_WIDTH)
        elif char == ".":
            self.push(emit_set([(0, MAX_RUNE)] if self.flags & DOTALL else negate([(10, 10)])))
        else:
            self.literal(ord(char))
        return False

    def literal(self, cp: int) -> None:
        self.push(emit_set(fold([(cp, cp)]) if self.flags & FOLD else [(cp, cp)]))

    # -- groups ------------------------------------------------------------------------------
    def open_group(self) -> None:
        if self.src.startswith("(?", self.pos):
            self.group_flags()
            return
        self.frames.append(_Frame(self.flags))
        self.pos += 1

    def bar(self) -> None:
        self.frames[-1].close_alternative()
        self.pos += 1

    def close_group(self) -> None:
        if len(self.frames) == 1:
            fail("unexpected )", self.src)
        frame = self.frames.pop()
        frame.close_alternative()
        self.flags = frame.saved_flags
        self.frames[-1].atoms.append(_Atom(f"(?:{'|'.join(frame.alternatives)})", PLAIN, frame.need))
        self.pos += 1

    def group_flags(self) -> None:
        """``(?P<name>``, ``(?flags)`` or ``(?flags:`` (Go's parsePerlFlags); all else refused."""
        src, start = self.src, self.pos
        if src.startswith("(?P<", start) and len(src) - start > 4:
            self.named_group(start)
            return
        flags, negated, saw_flag, i = self.flags, False, False, start + 2
        while i < len(src):
            char = src[i]
            i += 1
            if char in _FLAG_BITS:
                flags = flags & ~_FLAG_BITS[char] if negated else flags | _FLAG_BITS[char]
                saw_flag = True
            elif char == "-" and not negated:
                negated, saw_flag = True, False
            elif char in ":)" and (saw_flag or not negated):
                if char == ":":
                    self.frames.append(_Frame(self.flags))
                self.flags, self.pos = flags, i
                return
            else:
                break
        fail("invalid or unsupported Perl syntax", src[start:i])

    def named_group(self, start: int) -> None:
        end = self.src.find(">", start)
        if end < 0:
            fail("invalid named capture", self.src[start:])
        name = self.src[start + 4:end]
        if not name or any(c not in _ASCII_ALNUM + "_" for c in name):
            fail("invalid named capture", self.src[start:end + 1])
        self.frames.append(_Frame(self.flags))  # captures need no name: nothing refers back
        self.pos = end + 1

    # -- repetition --------------------------------------------------------------------------
    def repeat(self) -> bool:
        """``* + ?`` or a valid ``{n,m}``; any other ``{`` is a literal (Go's parseRepeat)."""
        src, start = self.src, self.pos
        if src[start] == "{":
            counts = parse_counts(src, start)
            if counts is None:
                self.literal(ord("{"))
                self.pos += 1
                return False
            low, high, self.pos = counts
            if low > MAX_REPEAT or high > MAX_REPEAT or 0 <= high < low:
                fail("invalid repeat count", src[start:self.pos])
        else:
            low, high = {"*": (0, -1), "+": (1, -1), "?": (0, 1)}[src[start]]
            self.pos += 1
        lazy = src.startswith("?", self.pos)
        self.pos += lazy
        if self.last_repeat is not None:
            fail("invalid nested repetition operator", src[self.last_repeat:self.pos])
        atoms = self.frames[-1].atoms
        if not atoms:
            fail("missing argument to repetition operator", src[start:self.pos])
        atoms[-1] = self.repeated(atoms[-1], low, high, src[start] == "{", lazy)
        if src[start] == "{" and (low >= 2 or high >= 2) and atoms[-1].need > MAX_REPEAT:
            fail("invalid repeat count", src[start:self.pos])
        return True

    def repeated(self, atom: _Atom, low: int, high: int, braces: bool, lazy: bool) -> _Atom:
        text = atom.text if atom.kind == PLAIN else f"(?:{atom.text})"
        if not braces:
            quantifier = {(0, -1): "*", (1, -1): "+", (0, 1): "?"}[(low, high)]
        else:
            quantifier = f"{{{low}}}" if low == high else f"{{{low},{'' if high < 0 else high}}}"
        if lazy != bool(self.flags & UNGREEDY):  # (?U) swaps greedy and lazy
            quantifier += "?"
        return _Atom(text + quantifier, REPEATED, repeat_need(atom.need, low, high, braces))

    # -- escapes -----------------------------------------------------------------------------
    def backslash(self) -> None:
        src, i = self.src, self.pos
        char = src[i + 1] if i + 1 < len(src) else ""
        zero_width = {"A": "\\A", "z": "\\Z", "b": _WORD_BOUNDARY, "B": _NOT_WORD_BOUNDARY}
        if char in zero_width:
            self.push(zero_width[char], ZERO_WIDTH)
            self.pos += 2
        elif char == "Q":
            self.quoted()
        elif char == "C":
            fail("invalid escape sequence", "\\C")
        elif char and char in "pPdDsSwW":
            ranges, self.pos = self.class_escape(i)
            self.push(emit_set(ranges))
        else:
            cp, self.pos = char_escape(src, i)
            self.literal(cp)

    def quoted(self) -> None:
        """``\\Q...\\E``: everything up to ``\\E`` (or the end) is literal text."""
        end = self.src.find("\\E", self.pos + 2)
        stop = len(self.src) if end < 0 else end
        for char in self.src[self.pos + 2:stop]:
            self.literal(ord(char))
        self.pos = len(self.src) if end < 0 else end + 2

    def class_escape(self, i: int) -> Tuple[Ranges, int]:
        """``\\d``-style or ``\\p``-style class at ``i``: its ranges (folded if ``(?i)``)."""
        letter = self.src[i + 1]
        if letter in "pP":
            return unicode_class(self.src, i)
        return self.group(_PERL[letter.lower()], letter.isupper()), i + 2

    def group(self, ranges: Ranges, negated: bool) -> Ranges:
        """A Perl or POSIX class: folded before it is negated, as Go's appendGroup."""
        folded = fold(ranges) if self.flags & FOLD else list(ranges)
        return negate(folded) if negated else folded

    # -- bracketed classes -------------------------------------------------------------------
    def char_class(self) -> None:
        src, start = self.src, self.pos
        i = start + 1
        negated = src.startswith("^", i)
        i += negated
        items: Ranges = []
        first = True
        while i >= len(src) or src[i] != "]" or first:
            first = False
            ranges, i = self.class_item(i, start)
            items.extend(ranges)
        self.pos = i + 1
        self.push(emit_set(negate(items) if negated else items))

    def class_item(self, i: int, start: int) -> Tuple[Ranges, int]:
        src = self.src
        if src.startswith("[:", i) and len(src) - i > 2:
            end = src.find(":]", i + 2)
            if end >= 0:
                return self.posix_class(src[i:end + 2]), end + 2
        if src.startswith("\\", i) and i + 1 < len(src) and src[i + 1] in "pPdDsSwW":
            return self.class_escape(i)
        item_start = i
        lo, i = class_char(src, i, start)
        hi = lo
        if i + 1 < len(src) and src[i] == "-" and src[i + 1] != "]":
            hi, i = class_char(src, i + 1, start)
            if hi < lo:
                fail("invalid character class range", src[item_start:i])
        return (fold([(lo, hi)]) if self.flags & FOLD else [(lo, hi)]), i

    def posix_class(self, name: str) -> Ranges:
        negated = name.startswith("[:^")
        ranges = _POSIX.get(name[3 if negated else 2:-2])
        if ranges is None:
            fail("invalid character class range", name)
        return self.group(ranges, negated)


def parse_counts(src: str, start: int) -> Optional[Tuple[int, int, int]]:
    """``{n}``, ``{n,}`` or ``{n,m}`` at ``start``: (n, m or -1, end); None if not a repeat."""
    match = _COUNTS.match(src, start)
    if match is None:
        return None
    low = int(match.group(1))
    if match.group(2) is None:
        return low, low, match.end()
    return low, int(match.group(3)) if match.group(3) else -1, match.end()


# No leading zeros (Go's parseInt); the digits are ASCII only.
_COUNTS = re.compile(r"\{(0|[1-9][0-9]*)(,([1-9][0-9]*|0)?)?\}", re.ASCII)


def repeat_need(need: int, low: int, high: int, braces: bool) -> int:
    """Go's repeatIsValid bound for a repeat of an atom whose own bound is ``need``."""
    if not braces:
        return need  # *, + and ? are not counted repeats
    if high == 0:
        return 0  # Go does not look inside x{0}
    times = high if high > 0 else low
    return need if times == 0 else times * max(1, need)


def char_escape(src: str, i: int) -> Tuple[int, int]:
    """The character a backslash escape at ``i`` stands for, and where it ends (Go's parseEscape)."""
    if i + 1 >= len(src):
        fail("trailing backslash at end of expression", "")
    char, j = src[i + 1], i + 2
    if char < "\x80" and char not in _ASCII_ALNUM:
        return ord(char), j  # escaped punctuation is itself
    if char == "0" or (char in "1234567" and j < len(src) and src[j] in _OCTAL):
        value = int(char)
        while j < len(src) and j < i + 4 and src[j] in _OCTAL:
            value, j = value * 8 + int(src[j]), j + 1
        return value, j
    if char == "x":
        return hex_escape(src, i)
    if char in _C_ESCAPES:
        return _C_ESCAPES[char], j
    fail("invalid escape sequence", src[i:j])


def hex_escape(src: str, i: int) -> Tuple[int, int]:
    """``\\x41`` or ``\\x{10FFFF}`` at ``i``."""
    if src.startswith("{", i + 2):
        close = i + 3
        while close < len(src) and src[close] in _HEX:
            close += 1
        digits = src[i + 3:close]
        if not digits or not src.startswith("}", close) or int(digits, 16) > MAX_RUNE:
            fail("invalid escape sequence", src[i:close + 1])
        return int(digits, 16), close + 1
    digits = src[i + 2:i + 4]
    if len(digits) < 2 or any(c not in _HEX for c in digits):
        fail("invalid escape sequence", src[i:i + 4])
    return int(digits, 16), i + 4


def class_char(src: str, i: int, start: int) -> Tuple[int, int]:
    """One character of a bracketed class at ``i`` (Go's parseClassChar)."""
    if i >= len(src):
        fail("missing closing ]", src[start:])
    if src[i] == "\\":
        return char_escape(src, i)
    return ord(src[i]), i + 1


def unicode_class(src: str, i: int) -> Tuple[Ranges, int]:
    """``\\pL``, ``\\p{Name}``, ``\\PL``, ``\\p{^Name}`` at ``i``: only ``Any`` is expressible."""
    negated = src[i + 1] == "P"
    if src.startswith("{", i + 2):
        close = src.find("}", i)
        if close < 0:
            fail("invalid character class range", src[i:])
        name, end = src[i + 3:close], close + 1
    else:
        name, end = src[i + 2:i + 3], i + 3
    seq = src[i:end]
    if name.startswith("^"):
        negated, name = not negated, name[1:]
    if name == "Any":
        return ([] if negated else [(0, MAX_RUNE)]), end
    if name in GO_CATEGORIES or name in GO_SCRIPTS:
        unsupported(f"Unicode class {seq}")
    fail("invalid character class range", seq)
