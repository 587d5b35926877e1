"""Per-file validation: schema walk, JSON Schema check, unsupported-feature check.

Each file is checked on its own (every key is optional at file level, since files merge).
All errors of a file are collected, sorted by JSON path and raised together as one
``ConfigErrors``; each renders as ``file: json.path: what is wrong (what was expected)``.
Unknown keys are warnings, as V2Ray ignores them: logged here and returned on the Document.
"""
from __future__ import annotations

import functools
import logging
import re
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Set, Tuple

import jsonschema

from v2sync.common.errors import (ConfigError, ConfigErrors, UnsupportedError, join_path,
                                  shown)
from v2sync.infra.conf.loader import Document
from v2sync.infra.conf.schema import (SchemaWalker, SupportTable, load_schema, path_sort_key,
                                      render_path)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# What v2sync implements. A V2Ray 4.34 config that uses anything else is refused with an
# error naming what is supported, never silently ignored. This is the one place to extend
# when a protocol, transport or feature lands (a new protocol also needs its settings
# converter in builder.PROTOCOL_SETTINGS).
SUPPORTED_INBOUNDS = frozenset({"dokodemo-door", "http", "shadowsocks", "socks", "trojan", "vless", "vmess"})
SUPPORTED_OUTBOUNDS = frozenset({"blackhole", "dns", "freedom", "http", "shadowsocks", "socks", "trojan", "vless", "vmess"})
SUPPORTED_NETWORKS = frozenset({"tcp", "websocket", "domainsocket"})  # see NETWORK_ALIASES
SUPPORTED_SECURITY = frozenset({"none", "", "tls"})
SUPPORTED_TCP_HEADERS = frozenset({"none", "http"})
SUPPORTED_ALLOCATE = frozenset({"always"})
# Optional sections and switches, by the FEATURE_* names below.
SUPPORTED_FEATURES: frozenset = frozenset({"acceptProxyProtocol", "dns", "routing"})
# ---------------------------------------------------------------------------------------

FEATURE_ROUTING = "routing"  # routing rules and balancers
FEATURE_DNS = "dns"  # dns servers and hosts
FEATURE_REVERSE = "reverse"
FEATURE_PROXY_PROTOCOL = "acceptProxyProtocol"

# How many errors (and warnings, per file) are printed: a 100,000-item list of bad values
# would otherwise print 100,000 lines. The rest are counted in one line.
MAX_SHOWN = 50

# TransportProtocol.Build in infra/conf/transport_internet.go: alias -> canonical name.
NETWORK_ALIASES = {"kcp": "mkcp", "ws": "websocket", "h2": "http", "ds": "domainsocket"}


def support_tables() -> Dict[str, SupportTable]:
    """The tables named by ``x-supported`` in schema.json."""
    return {
        "inbound": SupportTable(SUPPORTED_INBOUNDS),
        "outbound": SupportTable(SUPPORTED_OUTBOUNDS),
        "network": SupportTable(SUPPORTED_NETWORKS, NETWORK_ALIASES),
        "security": SupportTable(SUPPORTED_SECURITY),
        "tcpHeader": SupportTable(SUPPORTED_TCP_HEADERS),
        "allocate": SupportTable(SUPPORTED_ALLOCATE),
    }


def validate_document(raw: Mapping[str, Any], file: str) -> Document:
    """Canonicalize and check one parsed file; raises ConfigErrors listing every problem."""
    document, errors = check_document(raw, file)
    if errors:
        raise ConfigErrors(errors)
    return document


def check_document(raw: Mapping[str, Any], file: str) -> Tuple[Document, List[ConfigError]]:
    """The canonical document and its errors (sorted); warnings are logged and kept on it."""
    walker = SchemaWalker(load_schema(), support_tables(), file)
    data = walker.walk(raw)
    errors = walker.errors + schema_errors(data, file) + feature_errors(data, file)
    if errors:
        errors = v5_format_errors(raw, file) + errors
    for line in capped([w.render() for w in walker.warnings]):
        log.warning("%s", line)
    return Document(file, data, tuple(walker.warnings)), sort_errors(errors)


def v5_format_errors(raw: Mapping[str, Any], file: str) -> List[ConfigError]:
    """One error up front for a refused file that looks like v2ray v5's own format
    (``router``, ``services``, a log section of objects): its other errors would not say
    why. A file that loads is never refused for it (4.34 ignores a key it does not know)."""
    log_section = _obj(raw, "log")
    signs = [key for key in ("router", "services") if key in raw]
    signs += [f"log.{key} is an object" for key in ("access", "error")
              if isinstance(log_section.get(key), Mapping)]
    if not signs:
        return []
    return [ConfigError(f"this looks like a v2ray v5 config ({', '.join(signs)}); v2sync reads "
                        "the v4 format (v5's \"jsonv4\")", "", file,
                        "expected a v2ray 4.x config")]


def capped(lines: Sequence[str], limit: int = MAX_SHOWN) -> List[str]:
    """The first ``limit`` lines, then one line counting the rest."""
    if len(lines) <= limit:
        return list(lines)
    return [*lines[:limit], f"… and {len(lines) - limit} more"]


# Handler lists and the deprecated single handlers: an error inside one handler leaves it in
# place (the builder skips only the steps whose input was refused), so every error of every
# handler is reported in one pass. Any other section with an error is dropped whole.
HANDLER_KEYS = frozenset({"inbounds", "outbounds", "inboundDetour", "outboundDetour",
                          "inbound", "outbound"})


def without_errors(document: Document, errors: Sequence[ConfigError]) -> Document:
    """The document minus each section an error points into, and minus each handler that is
    itself refused (not an object); list items become None (merge skips them) so the others
    keep their JSON paths."""
    data = dict(document.data)
    copied = set()  # lists already copied (once each: 100,000 errors in one list are linear)
    for error in errors:
        match = _TOP_PATH.match(error.path)
        if match is None or match.group(1) not in data:
            continue
        key, index = match.group(1), match.group(2)
        if key in HANDLER_KEYS and match.end() < len(error.path):
            continue  # inside one handler: the builder skips just that part
        if index is not None and isinstance(data[key], list):
            if key not in copied:
                data[key] = list(data[key])
                copied.add(key)
            if int(index) < len(data[key]):
                data[key][int(index)] = None
        else:
            del data[key]
    return Document(document.name, data, document.warnings)


_TOP_PATH = re.compile(r"^([A-Za-z]+)(?:\[(\d+)\])?")
_PATH_CUT = re.compile(r"[.\[]")


class ReportedErrors:
    """Where validation already found errors, so the builder skips each step whose input was
    refused (its value may be of any JSON type) and still runs every other step."""

    def __init__(self, errors: Sequence[ConfigError] = ()):
        self._at: Set[Tuple[str, str]] = set()  # (file, path) of each error
        self._within: Set[Tuple[str, str]] = set()  # (file, p) for p each error's path or parent
        for e in errors:
            self._at.add((e.file, e.path))
            self._within.update((e.file, p) for p in path_prefixes(e.path))

    def covers(self, file: str, path: str) -> bool:
        """Has an error at ``path``, inside it, or at one of its parents?"""
        if (file, path) in self._within:
            return True
        return any((file, p) in self._at for p in path_prefixes(path))


def path_prefixes(path: str) -> List[str]:
    """``a[0].b`` -> ``a``, ``a[0]``, ``a[0].b``."""
    cuts = [m.start() for m in _PATH_CUT.finditer(path) if m.start() > 0]
    return [path[:i] for i in cuts] + [path]


def sort_errors(errors: Sequence[ConfigError]) -> List[ConfigError]:
    """Unique errors ordered by JSON path (stable, so a file's own order breaks ties)."""
    seen, unique = set(), []
    for e in errors:
        key = (e.file, e.path, e.message, e.expected)
        if key not in seen:
            seen.add(key)
            unique.append(e)
    return sorted(unique, key=lambda e: path_sort_key(e.path))


# --------------------------------------------------------------------------- JSON Schema

@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    base = jsonschema.Draft202012Validator
    # Go decodes 1.0 into no integer type, and a JSON boolean is never a number.
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _checker, v: isinstance(v, int) and not isinstance(v, bool))
    cls = jsonschema.validators.extend(base, type_checker=checker)
    return cls(load_schema())


# schema.json describes values at most 9 levels down (tests check it stays under this);
# what lies deeper is opaque to it and reaches jsonschema cut off here, because jsonschema
# reprs a value it refuses and repr recurses: a 10,000-deep array would end in RecursionError.
SCHEMA_DEPTH = 64


# JSON Schema costs ~0.2 ms per refused item: a file of 100,000 bad items took 20 s to
# count every error, while only 50 are printed. Past this many, checking the file stops.
MAX_CHECKED_ERRORS = 1_000


class TooManyErrors(ConfigError):
    """Checking a file stopped early; what the schema did not reach is unchecked, so the
    builder must not run on it."""


def schema_errors(data: Any, file: str) -> List[ConfigError]:
    errors: List[ConfigError] = []
    for error in _validator().iter_errors(cut_below(data, SCHEMA_DEPTH)):
        errors.extend(_render(error, file))
        if len(errors) >= MAX_CHECKED_ERRORS:
            errors.append(TooManyErrors(
                f"too many errors: checking stopped after the first {MAX_CHECKED_ERRORS:,}",
                file=file))
            break
    return errors


def cut_below(value: Any, depth: int) -> Any:
    """``value`` itself, or when it nests deeper than ``depth``, a copy whose containers at
    that depth are emptied (same JSON types, nothing deeper). No recursion."""
    if _depth_exceeds(value, depth):
        return _copy_cut(value, depth)
    return value


def _depth_exceeds(value: Any, depth: int) -> bool:
    pending = [(value, 0)]
    while pending:
        item, level = pending.pop()
        if level > depth:
            return True
        pending.extend((child, level + 1) for child in _children(item))
    return False


def _children(item: Any) -> Sequence[Any]:
    if isinstance(item, dict):
        return [v for v in item.values() if isinstance(v, (dict, list))]
    if isinstance(item, list):
        return [v for v in item if isinstance(v, (dict, list))]
    return ()


def _copy_cut(value: Any, depth: int) -> Any:
    root: List[Any] = [None]
    pending = [(root, 0, value, 0)]  # (parent, key in parent, original, its level)
    while pending:
        parent, key, item, level = pending.pop()
        copy = type(item)()
        parent[key] = copy
        if level >= depth:
            continue
        keys = item.keys() if isinstance(item, dict) else range(len(item))
        for k in keys:
            child = item[k]
            nested = isinstance(child, (dict, list))
            if isinstance(copy, dict):
                copy[k] = None if nested else child  # None holds the key's place
            else:
                copy.append(None if nested else child)
            if nested:
                pending.append((copy, k, child, level + 1))
    return root[0]


_ARTICLES = {"integer": "an integer", "object": "an object", "array": "an array",
             "string": "a string", "boolean": "a boolean", "number": "a number", "null": "null"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    names = {dict: "object", list: "array", str: "string", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _render(error: Any, file: str) -> List[ConfigError]:
    parts = list(error.absolute_path)
    path = render_path(parts)
    schema, keyword, value = error.schema, error.validator, error.instance
    what = schema.get("x-what", "value")
    hint = schema.get("x-expected", "")
    if keyword == "required":
        missing = [k for k in error.validator_value if isinstance(value, dict) and k not in value]
        return [ConfigError("missing required key", render_path([*parts, k]), file,
                            expected=_required_hint(schema, k)) for k in missing]
    if keyword == "enum":
        return [ConfigError(f"unknown {what} {shown(value)}", path, file,
                            expected="expected one of: " + _enum_choices(schema))]
    if keyword == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) \
            else [error.validator_value]
        expected = hint or "expected " + " or ".join(_ARTICLES.get(t, str(t)) for t in wanted)
        article = _ARTICLES.get(_json_type(value), _json_type(value))
        return [ConfigError(f"{shown(value)} is {article}", path, file, expected)]
    if keyword in ("minimum", "maximum"):
        bound = ">=" if keyword == "minimum" else "<="
        return [ConfigError(f"{shown(value)} is out of range", path, file,
                            expected=hint or f"expected {bound} {error.validator_value}")]
    if keyword in ("anyOf", "oneOf", "pattern", "const"):
        return [ConfigError(f"invalid {what} {shown(value)}", path, file,
                            expected=hint or _generic_expectation(error))]
    return [ConfigError(error.message, path, file)]


def _required_hint(schema: Mapping[str, Any], key: str) -> str:
    prop = schema.get("properties", {}).get(key, {})
    return "expected one of: " + _enum_choices(prop) if "enum" in prop else ""


def _enum_choices(schema: Mapping[str, Any]) -> str:
    table = support_tables().get(schema.get("x-supported", ""))
    names = sorted(table.names) if table else list(schema["enum"])
    return ", ".join(n for n in names if n) or "nothing yet"


def _generic_expectation(error: Any) -> str:
    if error.validator == "pattern":
        return f"expected a string matching {error.validator_value}"
    if error.validator == "const":
        return f"expected {error.validator_value!r}"
    kinds = [b.get("type", "?") for b in error.validator_value if isinstance(b, Mapping)]
    return "expected " + " or ".join(_ARTICLES.get(k, str(k)) for k in kinds)


# --------------------------------------------------------------------------- features

def feature_errors(data: Mapping[str, Any], file: str) -> List[ConfigError]:
    """Errors for optional V2Ray features this file uses that v2sync does not implement."""
    errors: List[ConfigError] = []
    for feature, path, message in _features_in_use(data):
        if feature not in SUPPORTED_FEATURES:
            errors.append(UnsupportedError(message, path, file))
    return errors


def _obj(parent: Any, key: str) -> Mapping[str, Any]:
    """``parent[key]`` if both are objects, else ``{}`` (the schema reports wrong types)."""
    value = parent.get(key) if isinstance(parent, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _features_in_use(data: Mapping[str, Any]) -> Iterator[Tuple[str, str, str]]:
    routing = _obj(data, "routing")
    for key in ("rules", "balancers"):
        if routing.get(key):
            yield (FEATURE_ROUTING, f"routing.{key}",
                   f"routing {key} are not supported by v2sync yet")
    if _obj(routing, "settings").get("rules"):
        yield (FEATURE_ROUTING, "routing.settings.rules",
               "routing rules are not supported by v2sync yet")
    dns = _obj(data, "dns")
    for key in ("servers", "hosts"):
        if dns.get(key):
            yield FEATURE_DNS, f"dns.{key}", f"dns {key} are not supported by v2sync yet"
    reverse = _obj(data, "reverse")
    for key in ("bridges", "portals"):
        if reverse.get(key):
            yield (FEATURE_REVERSE, f"reverse.{key}",
                   f"reverse proxy {key} are not supported by v2sync yet")
    for path, handler in _handlers(data):
        yield from _handler_features(path, handler)
    for key, value in _obj(data, "transport").items():
        yield from _proxy_protocol_features(f"transport.{key}", value)


def _handlers(data: Mapping[str, Any]) -> Iterator[Tuple[str, Mapping[str, Any]]]:
    for single in ("inbound", "outbound"):
        if isinstance(data.get(single), Mapping):
            yield single, data[single]
    for many in ("inbounds", "outbounds", "inboundDetour", "outboundDetour"):
        items = data.get(many)
        for i, item in enumerate(items if isinstance(items, list) else ()):
            if isinstance(item, Mapping):
                yield f"{many}[{i}]", item


def _handler_features(path: str, handler: Mapping[str, Any]) -> Iterator[Tuple[str, str, str]]:
    stream = _obj(handler, "streamSettings")
    # Every sockopt key is implemented: mark and tcpFastOpen (transport/internet/sockopt.py),
    # tproxy (tproxy.py).
    for key, value in stream.items():
        yield from _proxy_protocol_features(join_path(path, f"streamSettings.{key}"), value)


def _proxy_protocol_features(path: str, settings: Any) -> Iterator[Tuple[str, str, str]]:
    if isinstance(settings, Mapping) and settings.get("acceptProxyProtocol") is True:
        yield (FEATURE_PROXY_PROTOCOL, join_path(path, "acceptProxyProtocol"),
               "acceptProxyProtocol is not supported by v2sync yet")
