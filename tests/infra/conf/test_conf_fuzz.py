"""Fuzzing ``v2sync test``: every input exits 0 or 23 with messages, never a traceback.

Inputs start from the configs in ``conf/`` and go through random mutations: values replaced
by random JSON (keys and strings drawn from ``schema.json`` so validation goes deep), keys
dropped or added, case changed, values nested up to and past Go's 10,000 levels, lists of
1,000 items, then text damage (truncation, stray bytes, comments, BOMs, Latin-1), sometimes
as two files to merge, sometimes ``/dev/zero``. The CLI runs in this process.

``V2SYNC_FUZZ_EXAMPLES`` sets the number of inputs (default 120, a few seconds); the README
gives the figure of a 10,000-input run.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, List, Sequence, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from v2sync import cli
from v2sync.infra.conf.jsonreader import MAX_DEPTH, strip_comments
from v2sync.infra.conf.schema import load_schema
from v2sync.infra.conf.validate import MAX_SHOWN

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_PATHS = sorted((REPO_ROOT / "conf").glob("*.json"))
EXAMPLES = [json.loads(strip_comments(p.read_text())) for p in EXAMPLE_PATHS]
FUZZ_EXAMPLES = int(os.environ.get("V2SYNC_FUZZ_EXAMPLES", "120"))
FAILED_HEADER = "v2sync: failed to load config:"
DEPTHS = (500, 1_000, 5_000, MAX_DEPTH - 1, MAX_DEPTH + 1)  # the top object is one level
LONG_LIST = 1_000  # 20 times the errors printed; 100,000 are timed in the README


def _schema_words() -> Tuple[List[str], List[str]]:
    """Every property name and every string enum value in schema.json."""
    keys, values = set(), set()
    pending: List[Any] = [load_schema()]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            keys.update(node.get("properties", {}))
            values.update(v for v in node.get("enum", ()) if isinstance(v, str))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return sorted(keys), sorted(values)


SCHEMA_KEYS, SCHEMA_VALUES = _schema_words()
ODD_STRINGS = ["", "127.0.0.1", "::1", "localhost", "0.0.0.0", "1080-1090", "2-1", "env:NOPE",
               "@abstract", "/nonexistent-v2sync/x.sock", "geoip:private", "geosite:cn",
               "domain:x.test", "regexp:(", "full:", "ext:none.dat:x",
               "b831381d-6324-4d53-ad4f-8cda48b30811",
               "x" * 5000, "\u00e9\u4e2d\U0001f600", "\ufffd", "a,b,,c", "1e3", "65536"]
ODD_INTS = [-1, 0, 1, 53, 65535, 65536, 2**31, 2**32, 2**63, 2**64, 10**300]

KEYS = st.sampled_from(SCHEMA_KEYS) | st.text(max_size=8)
SCALARS = (st.none() | st.booleans() | st.sampled_from(ODD_INTS) | st.integers()
           | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(SCHEMA_VALUES)
           | st.sampled_from(ODD_STRINGS) | st.text(max_size=12))
LEAVES = st.sampled_from([None, True, *ODD_INTS, *ODD_STRINGS[:8]])  # for deep and long values
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)


# --------------------------------------------------------------------------- mutations

def _slots(doc: Any) -> List[Tuple[Any, Any]]:
    """Every (container, key-or-index) in the document, without recursion."""
    slots, pending = [], [doc]
    while pending:
        node = pending.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            slots.append((node, key))
            if isinstance(value, (dict, list)):
                pending.append(value)
    return slots


# Deep and long values are spliced into the text at the end (``_expand``): as Python objects
# they would make json.dumps, and Hypothesis's report of a failing example, recurse.
PLACEHOLDER = "\u0000fuzz:{kind}:{size}:{leaf}\u0000"


def _placeholder(kind: str, size: int, leaf: Any) -> str:
    return PLACEHOLDER.format(kind=kind, size=size, leaf=json.dumps(leaf))


def _expand(text: str) -> str:
    pieces = text.split('"\\u0000fuzz:')
    out = [pieces[0]]
    for piece in pieces[1:]:
        spec, rest = piece.split('\\u0000"', 1)
        kind, size, leaf = spec.split(":", 2)
        leaf = json.loads(json.loads(f'"{leaf}"'))
        out.append(_nested_text(int(size), json.dumps(leaf)) if kind == "deep"
                   else "[" + ",".join([json.dumps(leaf)] * int(size)) + "]")
        out.append(rest)
    return "".join(out)


def _nested_text(depth: int, leaf: str) -> str:
    """``depth`` levels alternating objects and arrays around ``leaf``."""
    openers = ['{"a":' if i % 2 else "[" for i in range(depth)]
    closers = ["}" if i % 2 else "]" for i in reversed(range(depth))]
    return "".join(openers) + leaf + "".join(closers)


def _mutate(data: st.DataObject, doc: Any) -> None:
    slots = _slots(doc)
    if not slots:
        doc["inbounds"] = data.draw(VALUES)
        return
    node, key = slots[data.draw(st.integers(0, len(slots) - 1))]
    kind = data.draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "case",
                                      "wrap", "deep", "long", "duplicate"]))
    if kind == "replace":
        node[key] = data.draw(VALUES)
    elif kind == "delete":
        del node[key]
    elif kind == "add":
        target = node[key] if isinstance(node[key], dict) else node
        if isinstance(target, dict):
            target[data.draw(KEYS)] = data.draw(VALUES)
        else:
            target.append(data.draw(VALUES))
    elif kind == "case" and isinstance(key, str):
        node[key.upper()] = node.pop(key)
    elif kind == "wrap":
        node[key] = [node[key]]
    elif kind == "deep":
        node[key] = _placeholder("deep", data.draw(st.sampled_from(DEPTHS)), data.draw(LEAVES))
    elif kind == "long":
        node[key] = _placeholder("long", LONG_LIST, data.draw(LEAVES))
    elif kind == "duplicate" and isinstance(node, list):
        node.append(json.loads(json.dumps(node[key])))


def _damage(data: st.DataObject, text: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["none", "none", "none", "truncate", "insert", "comment",
                                      "bom", "latin1", "flip"]))
    if kind == "none" or not text:
        return text
    at = data.draw(st.integers(0, len(text)))
    if kind == "truncate":
        return text[:at]
    if kind == "insert":
        return text[:at] + data.draw(st.binary(min_size=1, max_size=8)) + text[at:]
    if kind == "comment":
        marker = data.draw(st.sampled_from([b"//x\n", b"/*", b"#", b"*/", b"'"]))
        return text[:at] + marker + text[at:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + text
    if kind == "latin1":
        return text.decode("utf-8").encode("latin-1", errors="replace")
    index = min(at, len(text) - 1)
    return text[:index] + bytes([text[index] ^ data.draw(st.integers(1, 255))]) + text[index + 1:]


def _document(data: st.DataObject) -> bytes:
    doc = json.loads(json.dumps(data.draw(st.sampled_from(EXAMPLES))))
    for _ in range(data.draw(st.integers(0, 4))):
        _mutate(data, doc)
    return _damage(data, _expand(json.dumps(doc)).encode("utf-8"))


# --------------------------------------------------------------------------- running

def run_test_command(args: Sequence[str]) -> Tuple[int, str]:
    """``v2sync test ARGS`` in this process: exit code and stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["test", *args])
    return code, out.getvalue()


def check_outcome(code: int, output: str) -> None:
    lines = output.splitlines()
    assert code in (0, cli.EXIT_CONFIG_ERROR), output
    assert "Traceback" not in output and "internal error" not in output, output
    if code == 0:
        assert lines[-1] == "Configuration OK.", output
    else:
        assert FAILED_HEADER in lines and len(lines) >= 2, output
        assert len(lines) <= MAX_SHOWN + 2, len(lines)


def _fuzz_once(data: st.DataObject, write: Callable[[str, bytes], str]) -> None:
    names = [write(f"c{i}.json", _document(data)) for i in range(data.draw(st.integers(1, 2)))]
    if data.draw(st.integers(0, 40)) == 0:
        names.append("/dev/zero")
    code, output = run_test_command([arg for name in names for arg in ("-c", name)])
    check_outcome(code, output)


@contextlib.contextmanager
def working_directory(path: str) -> Iterator[None]:
    """Relative paths a fuzzed config names (log files, which ``test`` creates as v2ray's
    does) land in ``path``, not in the checkout."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_fuzzed_configs_exit_0_or_23_with_messages(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as directory, working_directory(directory):
        def write(name: str, content: bytes) -> str:
            path = os.path.join(directory, name)
            with open(path, "wb") as f:
                f.write(content)
            return path

        _fuzz_once(data, write)


def test_every_example_is_ok_through_the_same_runner() -> None:
    for path in EXAMPLE_PATHS:
        code, output = run_test_command(["-c", str(path)])
        assert (code, output.splitlines()[-1]) == (0, "Configuration OK."), output


def test_schema_words_were_found() -> None:
    assert {"inbounds", "streamSettings", "port"} <= set(SCHEMA_KEYS)
    assert {"vmess", "tcp"} <= set(SCHEMA_VALUES)
