"""Loading ``schema.json`` and walking a document against it before validation.

Go's ``encoding/json`` does things JSON Schema cannot express, so ``SchemaWalker`` does them
first, guided by the schema itself:

- keys match struct fields case-insensitively, an exact match first (``"Port"`` is ``port``);
  a ``null`` leaves a field unset, except a field marked ``x-raw`` (a ``json.RawMessage``
  in Go, which keeps the four bytes ``null``): there it stays, as ``None``;
- ``StringList`` fields take a comma-separated string as well as an array (``common.go``);
- some values are lower-cased before use (``protocol``, ``network``, ...: see ``x-lowercase``);
- unknown keys of struct-like objects are ignored by Go: here they are dropped with a warning;
- values V2Ray knows but v2sync does not implement are errors naming what is supported.

The walker returns a new, canonical document; it never modifies its input.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import jsonschema

from v2sync.common.errors import ConfigError, UnsupportedError

SCHEMA_RESOURCE = "schema.json"
PathPart = Union[str, int]
_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$|^[0-9]+$")
_PATH_TOKEN = re.compile(r'\[(\d+)\]|\["((?:[^"\\]|\\.)*)"\]|([^.\[\]]+)')


@functools.lru_cache(maxsize=1)
def load_schema() -> Mapping[str, Any]:
    """The packaged JSON Schema (works from any working directory)."""
    text = resources.files(__package__).joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def render_path(parts: Sequence[PathPart]) -> str:
    """``["inbounds", 0, "port"]`` -> ``inbounds[0].port``; odd keys are quoted: ``["a.b"]``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += "[" + json.dumps(part) + "]"
    return out


def path_sort_key(path: str) -> List[tuple]:
    """Sort key that orders ``x[2]`` before ``x[10]`` and a parent before its children."""
    key: List[tuple] = []
    for index, quoted, name in _PATH_TOKEN.findall(path):
        key.append((0, int(index), "") if index else (1, 0, quoted or name))
    return key


@dataclass(frozen=True)
class SupportTable:
    """What v2sync implements of one V2Ray enumeration; ``aliases`` map to canonical names."""

    names: frozenset
    aliases: Mapping[str, str] = field(default_factory=dict)

    def allows(self, value: str) -> bool:
        return self.aliases.get(value, value) in self.names

    def describe(self) -> str:
        shown = sorted(n for n in self.names if n)
        return ", ".join(shown) if shown else "nothing yet"


class SchemaWalker:
    """One pass over one document; collects ``warnings`` and ``errors`` as ConfigErrors."""

    def __init__(self, root: Mapping[str, Any], support: Mapping[str, SupportTable], file: str):
        self.root = root
        self.support = support
        self.file = file
        self.warnings: List[ConfigError] = []
        self.errors: List[ConfigError] = []
        self._if_validators: Dict[int, Any] = {}

    def walk(self, value: Any, schema: Optional[Mapping[str, Any]] = None,
             parts: Sequence[PathPart] = ()) -> Any:
        schema = self._deref(self.root if schema is None else schema)
        if isinstance(value, str):
            value = self._walk_string(value, schema, list(parts))
        if isinstance(value, dict):
            value = self._walk_object(value, schema, list(parts))
        elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
            value = [self.walk(v, schema["items"], [*parts, i]) for i, v in enumerate(value)]
        for sub in schema.get("allOf", ()):
            value = self._walk_conditional(value, sub, parts)
        for keyword in ("anyOf", "oneOf"):
            branch = self._pick_branch(value, schema.get(keyword, ()))
            if branch is not None:
                value = self.walk(value, branch, parts)
        return value

    # ---------------------------------------------------------------- helpers

    def _deref(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        """Resolve a local ``$ref``; sibling keys (annotations) are kept."""
        while "$ref" in schema:
            target = self.root
            for token in schema["$ref"].lstrip("#/").split("/"):
                target = target[token]
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    def _walk_string(self, value: str, schema: Mapping[str, Any], parts: List[PathPart]) -> Any:
        if schema.get("x-string-list"):
            return value.split(",")  # StringList: split on commas, no trimming (common.go)
        if schema.get("x-lowercase"):
            value = value.lower()
        self._check_known(value, schema, parts)
        self._check_supported(value, schema, parts)
        return value

    def _walk_object(self, value: Dict[str, Any], schema: Mapping[str, Any],
                     parts: List[PathPart]) -> Dict[str, Any]:
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None:  # a map (policy levels, headers) or an opaque object (settings)
            if isinstance(extra, Mapping):  # a null map value is a nil pointer: skipped
                self._refuse_nulls(value, schema, parts)
                return {k: self.walk(v, extra, [*parts, k])
                        for k, v in value.items() if v is not None}
            return dict(value)
        folded: Dict[str, str] = {}
        for name in props:
            folded.setdefault(name.casefold(), name)
        result: Dict[str, Any] = {}
        for key, item in value.items():
            name = key if key in props else folded.get(key.casefold())
            if name is None:
                if extra is False:
                    self._warn_unknown(key, schema, [*parts, key])
                else:
                    result[key] = item
                continue
            if item is None:
                if props[name].get("x-raw"):
                    result[name] = None
                continue  # null leaves a Go field at its zero value
            if name in result:
                self._warn(f"key {key!r} repeats {name!r}; the later one wins", [*parts, key])
            result[name] = self.walk(item, props[name], [*parts, name])
        return result

    def _walk_conditional(self, value: Any, sub: Mapping[str, Any],
                          parts: Sequence[PathPart]) -> Any:
        if "if" not in sub:
            return self.walk(value, sub, parts)
        validator = self._if_validators.get(id(sub))
        if validator is None:
            validator = jsonschema.Draft202012Validator(sub["if"])
            self._if_validators[id(sub)] = validator
        branch = sub.get("then") if validator.is_valid(value) else sub.get("else")
        return value if branch is None else self.walk(value, branch, parts)

    def _pick_branch(self, value: Any, branches: Sequence[Mapping[str, Any]]):
        for branch in branches:
            resolved = self._deref(branch)
            if _type_matches(value, resolved.get("type")):
                return resolved
        return None

    def _refuse_nulls(self, value: Dict[str, Any], schema: Mapping[str, Any],
                      parts: List[PathPart]) -> None:
        """Maps whose Go builder rejects a nil value (``x-null-error``: 4.34's message)."""
        message = schema.get("x-null-error")
        if not message:
            return
        for key in [k for k, v in value.items() if v is None]:
            self.errors.append(ConfigError(f"{message}: {key}", render_path([*parts, key]),
                                           self.file, "expected a string or a list of strings"))

    def _check_known(self, value: str, schema: Mapping[str, Any], parts: List[PathPart]) -> None:
        known = schema.get("x-known")
        if known is None or value in known:
            return
        expected = "known: " + ", ".join(k for k in known if k)
        if "x-unknown" in schema:
            what = schema.get("x-what", "value")
            self._warn(f"unknown {what} {value!r}, {schema['x-unknown']}", parts, expected)
        else:
            self._warn(f"unknown value {value!r}, using {schema.get('x-fallback')!r}", parts,
                       expected)

    def _check_supported(self, value: str, schema: Mapping[str, Any],
                         parts: List[PathPart]) -> None:
        table_name = schema.get("x-supported")
        # a value outside the enum is not a V2Ray name at all: the schema reports it
        if table_name is None or value not in schema.get("enum", ()):
            return
        table = self.support[table_name]
        if not table.allows(value):
            self.errors.append(UnsupportedError(f"{value!r} is not supported by v2sync",
                                                render_path(parts), self.file,
                                                expected="supported: " + table.describe()))

    def _warn_unknown(self, key: str, schema: Mapping[str, Any], parts: List[PathPart]) -> None:
        home = schema.get("x-misplaced", {}).get(key.casefold())
        if home:
            self._warn(f"key {key!r} ignored here (it belongs in {home})", parts)
        else:
            self._warn(f"unknown key {key!r} ignored", parts)

    def _warn(self, message: str, parts: Sequence[PathPart], expected: str = "") -> None:
        self.warnings.append(ConfigError(message, render_path(parts), self.file, expected))


_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool,
               "null": type(None)}


def _type_matches(value: Any, wanted: Any) -> bool:
    if wanted is None:
        return True
    if isinstance(wanted, list):
        return any(_type_matches(value, w) for w in wanted)
    if wanted in ("integer", "number"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _JSON_TYPES.get(wanted, object))
