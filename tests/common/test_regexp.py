"""compile_go: Go's regexp syntax (as v2ray 4.34 reads ``regexp:`` rules) on Python's ``re``.

What Go does in each case was checked against the real v2ray 4.34 (go1.19.8); the routing and
config-acceptance comparisons themselves are in tests/scenarios/test_regexp_differential.py.
"""
from __future__ import annotations

import random
import re
from typing import Sequence, Tuple

import pytest

from v2sync.common import regexp_linear
from v2sync.common.regexp import compile_go, translate
from v2sync.common.regexp_linear import LinearPattern

KELVIN, LONG_S = "\u212a", "\u017f"


def found(pattern: str, text: str) -> bool:
    return compile_go(pattern).search(text) is not None


def check(pattern: str, hits: Sequence[str], misses: Sequence[str] = ()) -> None:
    for text in hits:
        assert found(pattern, text), f"{pattern!r} should find a match in {text!r}"
    for text in misses:
        assert not found(pattern, text), f"{pattern!r} should not match {text!r}"


# (pattern, texts Go matches, texts Go does not match)
MATCHES: Sequence[Tuple[str, Sequence[str], Sequence[str]]] = [
    # POSIX classes: ASCII only, negatable, only inside brackets
    (r"^[[:alpha:]]+\.posix$", ["abc.posix", "XyZ.posix"], ["ab1.posix", "\u00e9.posix", ":.posix"]),
    (r"^[[:^digit:]]+$", ["abc", "\u0663"], ["a1"]),
    (r"^[[:alnum:]]$", ["a", "Z", "5"], ["_", "\u00e9"]),
    (r"^[[:ascii:]]$", ["\x00", "\x7f"], ["\x80"]),
    (r"^[[:blank:]]$", [" ", "\t"], ["\n"]),
    (r"^[[:cntrl:]]$", ["\x00", "\x1f", "\x7f"], [" ", "\x80"]),
    (r"^[[:graph:]]$", ["!", "~"], [" ", "\x7f"]),
    (r"^[[:lower:]]$", ["a", "z"], ["A", "\u00e9"]),
    (r"^[[:print:]]$", [" ", "~"], ["\t"]),
    (r"^[[:punct:]]$", ["!", "/", ":", "@", "[", "`", "{", "~"], ["a", "0", " ", "\u00a1"]),
    (r"^[[:space:]]$", [" ", "\t", "\n", "\v", "\f", "\r"], ["\x85", "\u00a0"]),
    (r"^[[:upper:]]$", ["A", "Z"], ["a", "\u00c9"]),
    (r"^[[:word:]]$", ["a", "_", "0"], ["-", "\u00e9"]),
    (r"^[[:xdigit:]]$", ["0", "f", "F"], ["g", "G"]),
    (r"^[[:word:][:punct:]]+$", ["a_b-c"], ["a b"]),
    ("[:alpha:]", ["a", ":"], ["b"]),                            # outside brackets: a plain set
    # Perl classes and word boundaries: ASCII only
    (r"^\d+$", ["0123456789"], ["\u0663", "\uff11"]),
    (r"^\D$", ["a", "\u0663"], ["1"]),
    (r"^\w+$", ["a_Z9"], ["\u00e9", "-"]),
    (r"^\W$", ["\u00e9", "-"], ["a"]),
    (r"^\s$", [" ", "\t", "\n", "\f", "\r"], ["\v", "\x85", "\u00a0", "\u2003"]),
    (r"^\S$", ["\v", "a"], [" "]),
    (r"\bfoo\b", ["a.foo.b", "foo", "\u00e9foo"], ["afoo.b", "foo_"]),
    (r"\Bbar", ["xbar", "_bar"], ["bar", "a.bar"]),
    (r"\B", ["", "ab"], []),                                      # re < 3.14 finds no \B in ""
    ("\\b\u00e9", ["x\u00e9"], ["\u00e9\u00e9", "\u00e9"]),
    (r"^[\d\s]+$", ["1 2"], ["1a"]),
    (r"^[\D]$", ["a"], ["1"]),
    # anchors: ^ $ are the text's ends unless (?m); \A \z always
    (r"a$", ["ba"], ["a\n", "a\nb"]),
    (r"^a", ["ab"], ["b\na"]),
    (r"(?m)^a$", ["b\na\nc", "a\n"], ["ba"]),
    (r"(?m:a$)\n", ["a\n"], []),
    (r"ab\z", ["www.ab"], ["ab\n", "ab.www"]),
    (r"\Aab", ["ab.c"], ["x.ab"]),
    (r"(?m)\Aab", ["ab"], ["x\nab"]),
    (r"^*a", ["a"], []),
    (r"$+", ["", "x"], []),
    # repeats: { is a literal unless it starts {n}, {n,} or {n,m}; no leading zeros
    (r"^x{,2}\.brace$", ["x{,2}.brace"], ["xx.brace", ".brace"]),
    (r"^x{2}$", ["xx"], ["x", "xxx"]),
    (r"^x{2,}$", ["xx", "xxxx"], ["x"]),
    (r"^x{1,2}$", ["x", "xx"], ["xxx"]),
    (r"^x{01}$", ["x{01}"], ["x"]),
    (r"^x{0}y$", ["y"], ["xy"]),
    (r"^x{1,2,}$", ["x{1,2,}"], ["x"]),
    (r"^x{ 1}$", ["x{ 1}"], []),
    (r"^{2}", ["{2}"], []),                                       # after ^ it repeats the ^
    (r"^a{}$", ["a{}"], []),
    (r"^a{1000}$", ["a" * 1000], ["a" * 999]),
    (r"^(a{10}){100}$", ["a" * 1000], []),
    (r"^a*(?i)*$", ["aaa", ""], []),
    (r"^a*\Q\E*$", ["aa"], []),
    (r"^(?:)*x", ["x"], []),
    (r"^a{2,3}?x$", ["aax", "aaax"], ["ax"]),
    # (?U) swaps greedy and lazy
    (r"^(?U)a+?b$", ["aab"], ["b"]),
    (r"(?U)a+", ["a"], ["b"]),
    # flags: i m s U, scoped to the group, kept across | in the same group
    (r"(?i)abc", ["AbC"], ["abd"]),
    (r"^(?i:a)b$", ["Ab"], ["AB"]),
    (r"^a(?i)b|^c$", ["aB", "C"], ["Ab"]),
    (r"^(?:a(?i)b)|^c$", ["aB"], ["C"]),
    (r"^(?i)a(?-i)b$", ["Ab"], ["aB"]),
    (r"^(?i-i)a$", ["a"], ["A"]),
    (r"^(?)a$", ["a"], []),
    (r"^(?s).$", ["\n"], []),
    (r"^.$", ["a", "\u00e9"], ["\n"]),
    (r"^(?s:.)(?-s:.)$", ["\na"], ["a\n"]),
    (r"^(?is-mU:A.)$", ["a\n"], []),
    # (?i): simple case folding, which reaches KELVIN SIGN and LONG S from ASCII
    (r"(?i)^k$", ["k", "K", KELVIN], ["x"]),
    (r"(?i)^s$", ["s", "S", LONG_S], ["x"]),
    (r"(?i)^[^k]$", ["x"], ["k", "K", KELVIN]),
    (r"(?i)^[a-c]+$", ["AbC"], ["d"]),
    (r"(?i)^[j-l]$", [KELVIN], []),
    (r"(?i)^\w$", [KELVIN, LONG_S], ["\u00e9"]),
    (r"(?i)^\W$", ["\u00e9"], [KELVIN, LONG_S, "a"]),
    (r"(?i)^[[:upper:]]$", ["a", "A", KELVIN], ["1"]),
    (r"(?i)^[^[:lower:]]$", ["1"], ["a", "A", LONG_S]),
    (r"^[[:upper:]]$", ["A"], ["a", KELVIN]),                      # no (?i): no folding
    (r"(?i)^\x{4E2D}$", ["\u4e2d"], []),                           # caseless non-ASCII is fine
    (r"(?i)^1$", ["1"], []),
    # \Q...\E: literal text, to \E or the end; a repeat after it takes the last character
    (r"^\Qa.b\E\.q$", ["a.b.q"], ["axb.q"]),
    (r"^\Qa+b", ["a+b"], ["aab"]),
    (r"^\Q(?i)\E$", ["(?i)"], []),
    (r"^\Qab\E+$", ["abbb"], ["abab"]),
    (r"(?i)^\Qab\E$", ["AB"], []),
    # escapes: octal, \x, \x{...}, C escapes, escaped punctuation
    (r"^\x41\x{42}\103$", ["ABC"], ["abc"]),
    (r"^\x{10FFFF}$", ["\U0010ffff"], []),
    (r"^\101\08$", ["A\x008"], []),
    (r"^\0$", ["\x00"], []),
    (r"^\12$", ["\n"], []),
    (r"^\1234$", ["S4"], []),
    (r"^\400$", ["\u0100"], []),
    (r"^\a\f\t\n\r\v$", ["\a\f\t\n\r\v"], []),
    (r"^\_\-\.\ \#\/\<$", ["_-. #/<"], []),
    (r"^\x{fffd}$", ["\ufffd"], []),
    # bracketed classes: Go's reading of ] - [ & ~ | where Python warns or differs
    (r"^[[a]+$", ["a[", "["], ["b"]),
    (r"^[a&&b]$", ["&", "a"], ["c"]),
    (r"^[a~~b]$", ["~"], ["c"]),
    (r"^[a||b]$", ["|"], ["c"]),
    (r"^[+--]$", ["+", ",", "-"], ["a"]),
    (r"^[--a]$", ["-", "Z", "a"], ["b"]),
    (r"^[a-]$", ["a", "-"], ["b"]),
    (r"^[-a]$", ["-"], ["b"]),
    (r"^[\d-z]+$", ["1-z"], ["y"]),
    (r"^[]a]+$", ["]a"], ["b"]),
    (r"^[^]a]$", ["b"], ["]", "a"]),
    (r"^[a-]]$", ["a]", "-]"], ["a"]),
    (r"^[\]\[\\\^]+$", ["][\\^"], ["a"]),
    (r"^[^a]$", ["\n", "\u00e9", "\U0010ffff"], ["a"]),
    (r"^[\x{100}-\x{10FFFF}]$", ["\u0100", "\U0001f600"], ["\u00ff"]),
    (r"^[^\x00-\x{10FFFF}]?$", [""], ["a"]),
    (r"^[\p{Any}]$", ["\u00e9"], []),
    # \p: only Any, which v2sync can write exactly
    (r"^\p{Any}+$", ["x\u00e9"], []),
    (r"^\P{^Any}$", ["a"], []),
    (r"^a\P{Any}?$", ["a"], ["ab"]),
    (r"^a\p{^Any}?$", ["a"], ["ab"]),
    # groups: named (duplicates allowed), empty, nested
    (r"^(?P<n>a)(?P<n>b)$", ["ab"], ["ba"]),
    (r"^(a|ab)(c|bcd)(d*)$", ["abcd", "ac"], ["ad"]),
    (r"^()+$", [""], []),
    (r"^(|a)b$", ["b", "ab"], []),
    (r"^((a)|b)+$", ["abba"], ["c"]),
    # invalid UTF-8: Go sees each bad byte as U+FFFD; v2sync's surrogateescape sees \udc80..
    (r"^\x{fffd}$", ["\udcff", "\udc80"], ["\udc7f"]),
    (r"^.$", ["\udcff"], []),
    (r"^[^a]$", ["\udcff"], []),
    (r"^[\x{D000}-\x{E000}]$", ["\ue000"], ["\udcff", "\ud800"]),
    (r"^\x{D800}?$", [""], ["\ud800"]),
]


@pytest.mark.parametrize("pattern, hits, misses", MATCHES, ids=[m[0] for m in MATCHES])
def test_matches_as_go_does(pattern: str, hits: Sequence[str], misses: Sequence[str]) -> None:
    check(pattern, hits, misses)


def test_search_is_unanchored_like_match_string() -> None:
    check(r"b", ["abc"], ["xyz"])
    check(r"", ["", "x"])


def test_translation_never_warns() -> None:
    """Python's FutureWarning cases ("[[", "&&", "||", "~~", "--" in a set): every character
    of a translated set is escaped (the suite runs with warnings as errors)."""
    for pattern in (r"[[a&&b||c~~d-]", r"[+--]", r"[[:alpha:][]"):
        text = translate(pattern)
        assert not any(pair in text for pair in ("[[", "&&", "||", "~~", "--")), text


# (pattern, the words of Go's error): Go refuses each of these; so does compile_go.
REFUSED: Sequence[Tuple[str, str]] = [
    (r"(?=a)", "invalid or unsupported Perl syntax: `(?=`"),
    (r"(?!a)", "invalid or unsupported Perl syntax: `(?!`"),
    (r"(?<=a)", "invalid or unsupported Perl syntax: `(?<`"),
    (r"(?<!a)", "invalid or unsupported Perl syntax: `(?<`"),
    (r"(?<n>a)", "invalid or unsupported Perl syntax: `(?<`"),
    (r"(?P=n)", "invalid or unsupported Perl syntax: `(?P`"),
    (r"(?P>n)", "invalid or unsupported Perl syntax: `(?P`"),
    (r"(?#note)", "invalid or unsupported Perl syntax: `(?#`"),
    (r"(?x)a", "invalid or unsupported Perl syntax: `(?x`"),
    (r"(?a)a", "invalid or unsupported Perl syntax: `(?a`"),
    (r"(?>a)", "invalid or unsupported Perl syntax: `(?>`"),
    (r"(?i-)a", "invalid or unsupported Perl syntax: `(?i-)`"),
    (r"(?-)a", "invalid or unsupported Perl syntax: `(?-)`"),
    (r"(?i-m-s)a", "invalid or unsupported Perl syntax: `(?i-m-`"),
    (r"(?i", "invalid or unsupported Perl syntax: `(?i`"),
    (r"(?P<>a)", "invalid named capture: `(?P<>`"),
    (r"(?P<a-b>a)", "invalid named capture: `(?P<a-b>`"),
    (r"(?P<ab", "invalid named capture: `(?P<ab`"),
    (r"(a)\1", "invalid escape sequence: `\\1`"),
    (r"\8", "invalid escape sequence: `\\8`"),
    (r"\18", "invalid escape sequence: `\\1`"),
    (r"\Z", "invalid escape sequence: `\\Z`"),
    (r"\C", "invalid escape sequence: `\\C`"),
    (r"\G", "invalid escape sequence: `\\G`"),
    (r"\e", "invalid escape sequence: `\\e`"),
    (r"\u0041", "invalid escape sequence: `\\u`"),
    (r"\k<n>", "invalid escape sequence: `\\k`"),
    ("\\\u00e9", "invalid escape sequence: `\\\u00e9`"),
    (r"[\b]", "invalid escape sequence: `\\b`"),
    (r"[\A]", "invalid escape sequence: `\\A`"),
    (r"[\Qa\E]", "invalid escape sequence: `\\Q`"),
    (r"[a-\d]", "invalid escape sequence: `\\d`"),
    (r"\x{}", "invalid escape sequence"),
    (r"\x{110000}", "invalid escape sequence"),
    (r"\x{12", "invalid escape sequence"),
    (r"\x4", "invalid escape sequence"),
    (r"\xg0", "invalid escape sequence"),
    ("a\\", "trailing backslash at end of expression"),
    (r"a**", "invalid nested repetition operator: `**`"),
    (r"a*+", "invalid nested repetition operator: `*+`"),
    (r"a++", "invalid nested repetition operator: `++`"),
    (r"a*??", "invalid nested repetition operator: `*??`"),
    (r"x{2}{3}", "invalid nested repetition operator: `{2}{3}`"),
    (r"x{2}*", "invalid nested repetition operator: `{2}*`"),
    (r"*a", "missing argument to repetition operator: `*`"),
    (r"(*)", "missing argument to repetition operator: `*`"),
    (r"a|*", "missing argument to repetition operator: `*`"),
    (r"(?i)*", "missing argument to repetition operator: `*`"),
    (r"\Q\E*", "missing argument to repetition operator: `*`"),
    (r"{2}", "missing argument to repetition operator: `{2}`"),
    (r"x{1001}", "invalid repeat count: `{1001}`"),
    (r"x{2,1}", "invalid repeat count: `{2,1}`"),
    (r"x{1,1001}", "invalid repeat count: `{1,1001}`"),
    (r"x{99999999999}", "invalid repeat count"),
    (r"(a{10}){101}", "invalid repeat count: `{101}`"),
    (r"(?:a{2}b{3}){400}", "invalid repeat count: `{400}`"),
    (r"(a{5,}){300}", "invalid repeat count: `{300}`"),
    (r"((a{2})*){600}", "invalid repeat count: `{600}`"),
    (r"(a{1000}){1,2}", "invalid repeat count: `{1,2}`"),
    (r"[z-a]", "invalid character class range: `z-a`"),
    (r"[a--b]", "invalid character class range: `a--`"),
    (r"[\x{100}-a]", "invalid character class range: `\\x{100}-a`"),
    (r"[[:foo:]]", "invalid character class range: `[:foo:]`"),
    (r"[[:a]b:]]", "invalid character class range: `[:a]b:]`"),
    (r"\p{Foo}", "invalid character class range: `\\p{Foo}`"),
    (r"\p{Vithkuqi}", "invalid character class range: `\\p{Vithkuqi}`"),  # Unicode 14: not in Go 1.19
    (r"\p{any}", "invalid character class range: `\\p{any}`"),
    (r"\pX", "invalid character class range: `\\pX`"),
    (r"\p", "invalid character class range: `\\p`"),
    (r"\p{L", "invalid character class range: `\\p{L`"),
    (r"[a", "missing closing ]: `[a`"),
    (r"[]", "missing closing ]: `[]`"),
    (r"[^]", "missing closing ]: `[^]`"),
    (r"(a", "missing closing ): `(a`"),
    (r"a)", "unexpected ): `a)`"),
    ("a\ud800", "invalid UTF-8"),
]


@pytest.mark.parametrize("pattern, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_refuses_what_go_refuses(pattern: str, message: str) -> None:
    with pytest.raises(re.error) as refused:
        compile_go(pattern)
    assert message in str(refused.value)
    assert "not supported by v2sync" not in str(refused.value)


# Go accepts these; v2sync refuses, naming what it cannot express exactly.
UNSUPPORTED: Sequence[Tuple[str, str]] = [
    (r"\pL", "Unicode class \\pL is not supported by v2sync"),
    (r"\p{L}", "Unicode class \\p{L} is not supported by v2sync"),
    (r"\PN", "Unicode class \\PN is not supported by v2sync"),
    (r"\p{Greek}", "Unicode class \\p{Greek} is not supported by v2sync"),
    (r"\p{^Han}", "Unicode class \\p{^Han} is not supported by v2sync"),
    (r"[\p{Yezidi}]", "Unicode class \\p{Yezidi} is not supported by v2sync"),
    ("(?i)\u00e9", "case-insensitive matching of non-ASCII '\u00e9' (U+00E9) is not supported"),
    (r"(?i)\x{212A}", "case-insensitive matching of non-ASCII"),
    (r"(?i)[\x{80}-\x{10FFFF}]", "case-insensitive matching of the range \\x{80}-\\x{10FFFF}"),
    ("(" * 900 + "a" + ")" * 900, "nests too deeply for v2sync"),   # Go allows 1000 levels
]


@pytest.mark.parametrize("pattern, message", UNSUPPORTED, ids=[u[0][:20] for u in UNSUPPORTED])
def test_refuses_by_name_what_v2sync_cannot_express(pattern: str, message: str) -> None:
    with pytest.raises(re.error, match=re.escape(message)):
        compile_go(pattern)


def test_every_go_category_and_script_name_is_refused_by_name() -> None:
    for name in ("Lu", "Zs", "Cs", "Latin", "Khitan_Small_Script", "Common", "Inherited"):
        with pytest.raises(re.error, match="not supported by v2sync"):
            compile_go(f"\\p{{{name}}}")


def test_quantified_zero_width_forms_are_wrapped_for_python() -> None:
    """Go repeats an anchor or a repeat (after a flag group); Python needs a group for it."""
    for pattern in (r"^*", r"\b+a", r"\z?", r"(?m)^*a", r"a*(?i)+", r"a{2}(?s)*"):
        compile_go(pattern)


# --------------------------------------------------------------------------- linear time

def test_every_pattern_here_runs_on_the_linear_matcher() -> None:
    """compile_go falls back to re only for a form translate() never writes."""
    for pattern, _, _ in MATCHES:
        assert isinstance(compile_go(pattern), LinearPattern), pattern


# Pieces of Go syntax the fuzz below joins into patterns.
_ATOMS = ["a", "b", ".", "[a-c]", "[^b]", r"\.", r"\d", r"\w", r"\b", r"\B", "^", "$", r"\A",
          r"\z", "(?i)k", "(?s:.)", "[[:alpha:]]", r"\x{212a}", "(a|b)", "(a|)", "()"]
_QUANTIFIERS = ["", "", "*", "+", "?", "*?", "{2}", "{1,3}", "{2,}"]
_TEXT_CHARS = "ab.c1_kK\n \u212a"


def _random_pattern(rng: random.Random, depth: int = 0) -> str:
    parts = []
    for _ in range(rng.randint(1, 4)):
        atom = rng.choice(_ATOMS)
        if depth < 2 and rng.random() < 0.2:
            atom = f"(?:{_random_pattern(rng, depth + 1)}|{_random_pattern(rng, depth + 1)})"
        quantifier = rng.choice(_QUANTIFIERS)
        if quantifier and atom in ("^", "$", r"\A", r"\z", r"\b", r"\B"):
            atom = f"(?:{atom})"  # Go refuses a bare repeated anchor only in some forms
        parts.append(atom + quantifier)
    flags = rng.choice(["", "", "(?m)", "(?s)", "(?U)"])
    return flags + "".join(parts)


def test_the_linear_matcher_finds_what_re_finds_on_the_same_translation() -> None:
    """Random Go patterns and texts: the linear search and re's backtracking search of the
    same translated pattern agree (short texts, so re stays quick)."""
    rng = random.Random(20261206)
    compared = 0
    for _ in range(600):
        pattern = _random_pattern(rng)
        try:
            text = translate(pattern)
        except re.error:
            continue  # refused as Go refuses it: not this test's business
        linear, backtracking = LinearPattern(text), re.compile(text)
        for _ in range(8):
            subject = "".join(rng.choice(_TEXT_CHARS) for _ in range(rng.randint(0, 8)))
            assert bool(linear.search(subject)) == bool(backtracking.search(subject)), \
                (pattern, text, subject)
            compared += 1
    assert compared > 3000


# (Go pattern, text): re's backtracking takes exponential time on each; Go's and the linear
# matcher's answer comes at once (the first: 26 labels held v2sync 2.6 s, 30 labels ~40 s).
ADVERSARIAL = [(r"^(.+\.)*example\.com$", "a." * 120 + "x"),
               (r"(x+x+)+y", "x" * 5000),
               (r"^(a|a?)+$", "a" * 3000 + "b"),
               (r"(.*a){12}", "a" * 11 + "b" * 4000)]


@pytest.mark.parametrize("pattern, text", ADVERSARIAL, ids=[p for p, _ in ADVERSARIAL])
def test_texts_that_make_re_backtrack_for_ever_are_answered(pattern: str, text: str) -> None:
    assert compile_go(pattern).search(text) is None


def test_the_lazy_dfa_cache_is_bounded_and_starts_again() -> None:
    pattern = compile_go(r"[a-z]{3}[0-9]")
    assert isinstance(pattern, LinearPattern)
    for i in range(regexp_linear.MAX_CACHED // 10):
        pattern.search(f"{i:x}" * 3 + "".join(chr(0x4e00 + (i * 7 + k) % 5000) for k in range(20)))
    # each text brings 20 new characters, so 20 links: the cache filled and started again
    assert len(pattern._states) + pattern._transitions <= regexp_linear.MAX_CACHED
    assert sum(len(state.next) for state in pattern._states.values()) <= regexp_linear.MAX_CACHED
    assert pattern.search("abc1") and not pattern.search("ab1")
