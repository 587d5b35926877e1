"""Reading and multi-file merging of JSON configs.

Each file (or standard input) is read bounded and parsed by ``jsonreader``: comments as
``infra/conf/json/reader.go`` has them, Go's nesting limit, every failure a ConfigError.

Merging follows ``Config.Override`` in ``infra/conf/v2ray.go`` and the file order of
``main/main.go`` (``-config`` files first, then each ``-confdir``'s ``*.json`` in lexical
order). Every merged item remembers the file and JSON path it came from.
"""
from __future__ import annotations

import logging
import os
import posixpath
import re
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.infra.conf.jsonreader import (decode_text, parse_json, read_bounded,
                                          strip_comments)  # noqa: F401  (re-exported)
from v2sync.infra.conf.model import PortRange

log = logging.getLogger(__name__)

STDIN_NAMES = ("-", "stdin:")
CONFDIR_SUFFIX = ".json"  # main.go readConfDir: strings.HasSuffix(name, ".json")

# Sections a later file replaces wholesale when present (Config.Override), including the
# deprecated single/detour handler keys, which Override also replaces wholesale.
WHOLESALE_SECTIONS = (
    "log", "routing", "dns", "transport", "policy", "api", "stats", "reverse", "metrics",
    "inbound", "outbound", "inboundDetour", "outboundDetour",
)
# Override never touches the deprecated top-level "port": only the first file's counts.
FIRST_FILE_ONLY = ("port",)
# v2ray.go Override: a single new-tag outbound is appended, not prepended, when the file
# name (the whole argument, lower-cased) contains this marker.
TAIL_MARKER = "tail"
URL_SCHEMES = ("http://", "https://")


# --------------------------------------------------------------------------- reading

def read_text(name: str, stdin: Optional[IO[Any]] = None) -> str:
    """The text of config ``name``, at most ``MAX_CONFIG_BYTES``; ``-`` and ``stdin:`` read
    standard input."""
    if name in STDIN_NAMES:
        return _read_stream(stdin or sys.stdin, name)
    if name.lower().startswith(URL_SCHEMES):
        raise ConfigError("loading a config from a URL is not supported by v2sync (v2ray "
                          "fetches it); download it and give the file", file=name)
    try:
        with open(name, "rb") as f:
            data = read_bounded(f, name)
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror or e}", file=name) from None
    return decode_text(data, name)


def _read_stream(stream: IO[Any], name: str) -> str:
    """Standard input, bounded: its bytes when it has them, else (a StringIO) its text."""
    binary = getattr(stream, "buffer", None)
    try:
        if binary is not None:
            return decode_text(read_bounded(binary, name), name)
        return read_bounded(stream, name)  # type: ignore[return-value]
    except OSError as e:
        raise ConfigError(f"cannot read standard input: {e.strerror or e}", file=name) from None


def read_json(name: str, stdin: Optional[IO[Any]] = None) -> Dict[str, Any]:
    return parse_json(read_text(name, stdin), name)


def expand_confdirs(confdirs: Sequence[str]) -> List[str]:
    """The ``*.json`` entries of each directory, in the byte order of their names
    (``ioutil.ReadDir`` sorts Go strings, which are bytes). As 4.34's main.go, every entry
    so named is a config: one that is no readable file (a directory, a dangling link) is
    then an error when it is read, not skipped (4.34 panics on it)."""
    files: List[str] = []
    errors: List[ConfigError] = []
    for directory in confdirs:
        try:
            names = sorted(os.listdir(directory), key=os.fsencode)
        except OSError as e:
            errors.append(ConfigError(f"cannot read config directory: {e.strerror or e}",
                                      file=directory))
            continue
        for name in names:
            # Go's path.Join cleans the path, which the "tail" rule then reads.
            path = posixpath.normpath(os.path.join(directory, name))
            if name.endswith(CONFDIR_SUFFIX):
                files.append(path)
    if errors:
        raise ConfigErrors(errors)
    return files


# --------------------------------------------------------------------------- merging

@dataclass(frozen=True)
class Document:
    """One validated file: canonical data plus the warnings found while validating it."""

    name: str
    data: Mapping[str, Any]
    warnings: Tuple[ConfigError, ...] = ()


@dataclass(frozen=True)
class Located:
    """A JSON value and where it came from: ``file`` and the JSON ``path`` inside it."""

    value: Any
    file: str
    path: str


@dataclass
class MergedConfig:
    """The result of merging documents; ``sections`` holds everything but the handler lists."""

    sections: Dict[str, Located] = field(default_factory=dict)
    inbounds: List[Located] = field(default_factory=list)
    outbounds: List[Located] = field(default_factory=list)
    files: Tuple[str, ...] = ()

    def section(self, key: str) -> Optional[Located]:
        return self.sections.get(key)

    def all_inbounds(self) -> List[Located]:
        """Handlers in v2ray.go ``Build`` order: ``inbound``, ``inboundDetour``, ``inbounds``."""
        return self._with_deprecated("inbound", self.inbounds)

    def all_outbounds(self) -> List[Located]:
        return self._with_deprecated("outbound", self.outbounds)

    def holds(self, file: str, path: str) -> bool:
        """Whether the value ``file`` has at ``path`` is still in the merge: its handler or
        section was not replaced by a later file's."""
        top = _TOP_KEY.match(path)
        if top is None:
            return True
        key, index = top.group(1), top.group(2)
        if key in ("inbounds", "outbounds") and index is not None:
            wanted = f"{key}[{index}]"
            return any(item.file == file and item.path == wanted
                       for item in getattr(self, key))
        if key not in WHOLESALE_SECTIONS + FIRST_FILE_ONLY:
            return True  # not a merged key: nothing replaces it
        section = self.sections.get(key)
        return section is not None and section.file == file

    def _with_deprecated(self, kind: str, items: List[Located]) -> List[Located]:
        result: List[Located] = []
        single = self.sections.get(kind)
        if single is not None:
            result.append(single)
        detours = self.sections.get(kind + "Detour")
        if detours is not None:
            result.extend(Located(v, detours.file, f"{detours.path}[{i}]")
                          for i, v in enumerate(detours.value) if v is not None)
        return result + items


_TOP_KEY = re.compile(r"([A-Za-z]+)(?:\[(\d+)\])?")


def merge(documents: Sequence[Document]) -> MergedConfig:
    """Merge with ``Config.Override`` rules; the first document is taken whole."""
    merged = MergedConfig(files=tuple(d.name for d in documents))
    for index, doc in enumerate(documents):
        keys = WHOLESALE_SECTIONS + (FIRST_FILE_ONLY if index == 0 else ())
        for key in keys:
            if doc.data.get(key) is not None:
                merged.sections[key] = Located(doc.data[key], doc.name, key)
        inbounds = _located_list(doc, "inbounds")
        outbounds = _located_list(doc, "outbounds")
        if index == 0:
            merged.inbounds, merged.outbounds = inbounds, outbounds
            continue
        _override_handlers(merged.inbounds, inbounds, doc.name, "inbound", prepend=False)
        tail = TAIL_MARKER in doc.name.lower()
        _override_handlers(merged.outbounds, outbounds, doc.name, "outbound", prepend=not tail)
    return merged


def _located_list(doc: Document, key: str) -> List[Located]:
    # None marks an item dropped for errors (validate.without_errors); indexes stay true
    return [Located(v, doc.name, f"{key}[{i}]")
            for i, v in enumerate(doc.data.get(key) or ()) if v is not None]


def _override_handlers(base: List[Located], new: List[Located], name: str, kind: str,
                       prepend: bool) -> None:
    """Override's handler rule: one new item replaces by tag or is added; more replace all."""
    if not new:
        return
    if not base or len(new) > 1:
        base[:] = new
        return
    item = new[0]
    tag = _tag(item)
    for i, old in enumerate(base):
        if _tag(old) == tag:
            base[i] = item
            log.info("[%s] updated %s with tag: %s", name, kind, tag)
            return
    if prepend:
        base.insert(0, item)
        log.info("[%s] prepended %s with tag: %s", name, kind, tag)
    else:
        base.append(item)
        log.info("[%s] appended %s with tag: %s", name, kind, tag)


def _tag(item: Located) -> str:
    value = item.value.get("tag") if isinstance(item.value, Mapping) else None
    return value if isinstance(value, str) else ""


# --------------------------------------------------------------------------- value types

ENV_PREFIX = "env:"
MAX_PORT = 65535
PORT_EXPECTED = 'expected an integer 0-65535, a range "a-b" or "env:VAR"'


def parse_port_range(value: Any, path: str = "") -> PortRange:
    """A ``PortRange`` (``infra/conf/common.go``): an int, ``"a-b"``, ``"a"`` or ``"env:VAR"``.

    The environment variable's value may itself be a port or a range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"invalid port {value!r}", path, expected=PORT_EXPECTED)
    if isinstance(value, int):
        port = _port(value, value, path)
        return PortRange(port, port)
    text = value
    if text.startswith(ENV_PREFIX):
        var = text[len(ENV_PREFIX):]
        if var not in os.environ:
            raise ConfigError(f"environment variable {var!r} for the port is not set", path,
                              expected=PORT_EXPECTED)
        text = os.environ[var]
    first, sep, last = text.partition("-")
    low = _port_text(first, value, path)
    high = _port_text(last, value, path) if sep else low
    if low > high:
        raise ConfigError(f"invalid port range {value!r}: {low} > {high}", path,
                          expected="expected first <= last")
    return PortRange(low, high)


def _port_text(text: str, original: Any, path: str) -> int:
    # strconv.ParseUint: ASCII digits only, no sign, no spaces
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"invalid port {original!r}", path, expected=PORT_EXPECTED)
    return _port(int(text), original, path)


def _port(number: int, original: Any, path: str) -> int:
    if not 0 <= number <= MAX_PORT:
        raise ConfigError(f"port {original!r} is out of range", path, expected=PORT_EXPECTED)
    return number


def string_list(value: Any, path: str = "") -> Tuple[str, ...]:
    """A ``StringList``: an array of strings or one comma-separated string (no trimming)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split(","))
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"invalid string list {value!r}", path,
                      expected="expected an array of strings or a comma-separated string")
