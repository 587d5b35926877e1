"""Reading one config text: bounded size, UTF-8, comments, bounded nesting (v2ray
``infra/conf/json/reader.go`` and ``infra/conf/serial/loader.go``).

Every way a file can be wrong ends here as a ``ConfigError``, never as a Python exception:

- **Size.** A config is read up to ``MAX_CONFIG_BYTES`` and refused above it, so
  ``-c /dev/zero`` or a log file named by mistake ends at once instead of filling memory.
  V2Ray reads without a limit; its configs are kilobytes, the largest real ones (long
  inline domain lists, thousands of users) a few MiB. Python holds a parsed JSON document
  in 10-70x its size, so 64 MiB is generous for any real config and still fits a small
  machine's memory (figures in the README).
- **Encoding.** UTF-8, with or without a BOM. Bytes that are not UTF-8 read as U+FFFD, and
  so do lone ``\\uD800``-style escapes: Go's ``encoding/json`` does both, and v2ray accepts
  such files. A warning names the first bad byte.
- **Comments.** ``//`` and ``#`` to end of line and ``/* */`` blocks are blanked outside
  quoted strings, keeping every line and column, so syntax errors point into the original.
- **Nesting.** Go's decoder allows 10,000 levels (``maxNestingDepth`` in
  ``encoding/json/scanner.go``): so do we. ``json.loads`` recurses and stops near Python's
  recursion limit (~1,000), so deeper documents go through ``_decode_deep``, a parser with
  an explicit stack. ``NaN`` and ``Infinity`` are refused, as Go refuses them.
"""
from __future__ import annotations

import json
import logging
import re
from json.decoder import scanstring  # type: ignore[attr-defined]  # C-accelerated
from json.scanner import NUMBER_RE
from typing import IO, Any, Dict, List, Optional, Tuple

from v2sync.common.errors import ConfigError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_CONFIG_BYTES = 64 * MIB
MAX_DEPTH = 10_000  # encoding/json maxNestingDepth
UTF8_BOM = b"\xef\xbb\xbf"
REPLACEMENT = "\ufffd"

# One token the comment stripper must see whole: a quoted string (reader.go treats ' like ")
# whose backslashes escape the next character, a backslash outside strings, or a comment.
# An unclosed string or block comment runs to the end of the text, as in reader.go.
_TOKENS = re.compile(r"""
    "[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\\?\Z)
  | '[^'\\]*(?:\\[\s\S][^'\\]*)*(?:'|\\?\Z)
  | \\[\s\S]?
  | \#[^\n]*
  | //[^\n]*
  | /\*[\s\S]*?(?:\*/|\Z)
""", re.VERBOSE)
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_LITERALS = {"null": None, "true": True, "false": False}


def read_bounded(stream: IO[Any], name: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """At most ``limit`` bytes of ``stream``; a ConfigError if there is more."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"config is larger than {_size(limit)}", file=name,
                          expected=f"expected at most {_size(limit)}")
    return data


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n % MIB == 0 else f"{n} bytes"


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 (BOM optional); invalid bytes become U+FFFD with a warning, as in Go."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        log.warning("%s: not UTF-8 at byte %d (%s): invalid bytes read as U+FFFD, as V2Ray "
                    "reads them", name, e.start, e.reason)
        return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- comments

def strip_comments(text: str) -> str:
    """Blank out ``//``, ``#`` and ``/* */`` comments that are outside quoted strings.

    Like reader.go, both ``"..."`` and ``'...'`` count as strings and a backslash escapes the
    next character, inside or outside a string. Newlines are kept, so are all positions.
    """
    pieces: List[str] = []
    done = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] in "\"'\\":
            continue
        pieces.append(text[done:match.start()])
        pieces.append(_blank(token))
        done = match.end()
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _blank(comment: str) -> str:
    if "\n" not in comment:
        return " " * len(comment)
    return "".join(ch if ch == "\n" else " " for ch in comment)


# --------------------------------------------------------------------------- parsing

def parse_json(text: str, name: str) -> Dict[str, Any]:
    """Parse commented JSON; the top level must be an object."""
    data = loads(strip_comments(text), name)
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a JSON object", file=name,
                          expected="expected {...}")
    return data


def loads(text: str, name: str) -> Any:
    """``json.loads`` with Go's limits; every failure is a ConfigError naming line and column."""
    try:
        try:
            value = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            value = _decode_deep(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}",
                          file=name) from None
    except ValueError as e:  # an integer past Python's int_max_str_digits
        raise ConfigError(f"invalid JSON: {e}", file=name) from None
    if _LONE_SURROGATE_ESCAPE.search(text):
        value = _replace_lone_surrogates(value)
    return value


def _refuse_constant(word: str) -> Any:
    raise ValueError(f"{word} is not JSON")


class _Frame:
    """One open container while ``_decode_deep`` fills it; ``key`` is a dict's pending key."""

    __slots__ = ("container", "key")

    def __init__(self, container: Any):
        self.container = container
        self.key: Optional[str] = None


def _decode_deep(text: str) -> Any:
    """What ``json.loads`` returns, for documents too deep for it: an explicit stack."""
    stack: List[_Frame] = []
    pos = _skip(text, 0)
    while True:
        value, pos = _value_or_open(text, pos, stack)
        if value is _OPENED:
            continue
        while True:
            if not stack:
                return _end(text, value, pos)
            frame = stack[-1]
            _attach(frame, value)
            value, pos = _after_item(text, pos, stack)
            if value is _NEXT:
                break


_OPENED, _NEXT = object(), object()


def _value_or_open(text: str, pos: int, stack: List[_Frame]) -> Tuple[Any, int]:
    """A scalar or empty container at ``pos``, or ``_OPENED`` after pushing a new frame."""
    opener = text[pos:pos + 1]
    if opener not in ("{", "["):
        return _scalar(text, pos)
    if len(stack) >= MAX_DEPTH:
        raise json.JSONDecodeError(f"nesting deeper than {MAX_DEPTH} levels (V2Ray's limit)",
                                   text, pos)
    closer = "}" if opener == "{" else "]"
    after = _skip(text, pos + 1)
    if text.startswith(closer, after):
        return ({} if opener == "{" else []), after + 1
    frame = _Frame({} if opener == "{" else [])
    stack.append(frame)
    return _OPENED, _key(text, after, frame) if opener == "{" else after


def _after_item(text: str, pos: int, stack: List[_Frame]) -> Tuple[Any, int]:
    """After an item: ``_NEXT`` at a comma, else the closed container (popped)."""
    frame = stack[-1]
    is_object = isinstance(frame.container, dict)
    pos = _skip(text, pos)
    if text.startswith(",", pos):
        pos = _skip(text, pos + 1)
        return _NEXT, _key(text, pos, frame) if is_object else pos
    if not text.startswith("}" if is_object else "]", pos):
        raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    stack.pop()
    return frame.container, pos + 1


def _attach(frame: _Frame, value: Any) -> None:
    if isinstance(frame.container, dict):
        frame.container[frame.key] = value
    else:
        frame.container.append(value)


def _key(text: str, pos: int, frame: _Frame) -> int:
    """Read ``"key" :`` into ``frame``; the position of the value that follows."""
    if not text.startswith('"', pos):
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes",
                                   text, pos)
    frame.key, pos = scanstring(text, pos + 1)
    pos = _skip(text, pos)
    if not text.startswith(":", pos):
        raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
    return _skip(text, pos + 1)


def _scalar(text: str, pos: int) -> Tuple[Any, int]:
    if text.startswith('"', pos):
        return scanstring(text, pos + 1)
    for word, value in _LITERALS.items():
        if text.startswith(word, pos):
            return value, pos + len(word)
    number = NUMBER_RE.match(text, pos)
    if number is None:
        raise json.JSONDecodeError("Expecting value", text, pos)
    integer, fraction, exponent = number.groups()
    if fraction or exponent:
        return float(number.group()), number.end()
    return int(integer), number.end()


def _end(text: str, value: Any, pos: int) -> Any:
    pos = _skip(text, pos)
    if pos != len(text):
        raise json.JSONDecodeError("Extra data", text, pos)
    return value


def _skip(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]


def _replace_lone_surrogates(value: Any) -> Any:
    """Each string's unpaired surrogates as U+FFFD (Go's decoder does this); no recursion."""
    root = [value]
    pending: List[Any] = [root]
    while pending:
        container = pending.pop()
        if isinstance(container, dict):
            items = list(container.items())
            container.clear()
            for key, item in items:
                container[_LONE_SURROGATE.sub(REPLACEMENT, key)] = _fixed(item, pending)
        else:
            for index, item in enumerate(container):
                container[index] = _fixed(item, pending)
    return root[0]


def _fixed(item: Any, pending: List[Any]) -> Any:
    """A string with its lone surrogates replaced; a container is queued for its turn."""
    if isinstance(item, str):
        return _LONE_SURROGATE.sub(REPLACEMENT, item)
    if isinstance(item, (dict, list)):
        pending.append(item)
    return item
