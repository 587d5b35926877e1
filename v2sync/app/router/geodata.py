"""``geoip.dat`` / ``geosite.dat``: a minimal protobuf reader (and writer, for tests).

The files are serialized ``GeoIPList`` / ``GeoSiteList`` messages (``app/router/config.proto``
in 4.34)::

    GeoIPList   { repeated GeoIP entry = 1 }
    GeoIP       { string country_code = 1; repeated CIDR cidr = 2 }
    CIDR        { bytes ip = 1; uint32 prefix = 2 }
    GeoSiteList { repeated GeoSite entry = 1 }
    GeoSite     { string country_code = 1; repeated Domain domain = 2 }
    Domain      { Type type = 1; string value = 2; repeated Attribute attribute = 3 }
    Attribute   { string key = 1; oneof { bool bool_value = 2; int64 int_value = 3 } }

Only the lists a config names are decoded: the top level is walked once per file to index the
entries by country code (read from each entry's first field, which is where protobuf encoders
put field 1), and an entry's body is decoded when a rule asks for it. Files are found the way
``common/platform/others.go::GetAssetLocation`` finds them: the asset directory (an
environment variable, else the directory of the running interpreter, as v2ray uses its
executable's), then ``/usr/local/share/v2ray`` and ``/usr/share/v2ray``.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, cast

from v2sync.app.router.matchers import IPV4_BITS, IPV6_BITS, Cidr, DomainKind, parse_cidr
from v2sync.common.errors import ConfigError

log = logging.getLogger(__name__)

# Checked in this order; the v2sync names come first so v2sync can be pointed elsewhere than
# a v2ray running on the same machine. The dotted names are what platform.NewEnvFlag reads
# first; the upper-case ones are its NormalizeEnvName spelling.
ASSET_ENV_NAMES = ("v2sync.location.asset", "V2SYNC_LOCATION_ASSET",
                   "v2ray.location.asset", "V2RAY_LOCATION_ASSET")
SHARED_ASSET_DIRS = ("/usr/local/share/v2ray", "/usr/share/v2ray")
GEOIP_FILE = "geoip.dat"
GEOSITE_FILE = "geosite.dat"
PRIVATE_LIST = "private"

# The "private" list of v2fly/geoip (plugin/special/private.go): IANA special-purpose ranges.
# 4.34 itself only has it from geoip.dat; v2sync builds it in so geoip:private needs no file.
PRIVATE_CIDRS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "255.255.255.255/32", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
)

# Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
WIRE_VARINT, WIRE_FIXED64, WIRE_LEN, WIRE_FIXED32 = 0, 1, 2, 5
FIELD_ENTRY = 1          # GeoIPList.entry, GeoSiteList.entry
FIELD_CODE = 1           # GeoIP.country_code, GeoSite.country_code
FIELD_ITEMS = 2          # GeoIP.cidr, GeoSite.domain
FIELD_CIDR_IP, FIELD_CIDR_PREFIX = 1, 2
FIELD_DOMAIN_TYPE, FIELD_DOMAIN_VALUE, FIELD_DOMAIN_ATTRIBUTE = 1, 2, 3
FIELD_ATTR_KEY, FIELD_ATTR_BOOL = 1, 2
MAX_VARINT_BYTES = 10
IPV4_BYTES, IPV6_BYTES = 4, 16

T = TypeVar("T")


class MalformedDat(Exception):
    """Bytes that are not the protobuf message expected (translated to ConfigError)."""


@dataclass(frozen=True)
class SiteDomain:
    """One ``Domain`` of a geosite list; ``attributes`` are the attribute keys."""

    kind: DomainKind
    value: str
    attributes: Tuple[str, ...] = ()


# --------------------------------------------------------------------------- wire reading

def _varint(data: bytes, pos: int, end: int) -> Tuple[int, int]:
    result = shift = 0
    for i in range(pos, min(end, pos + MAX_VARINT_BYTES)):
        byte = data[i]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i + 1
        shift += 7
    raise MalformedDat(f"truncated or overlong varint at byte {pos}")


def iter_fields(data: bytes, pos: int, end: int) -> Iterator[Tuple[int, int, object]]:
    """Yield ``(field, wire_type, value)``: an int for varints, a ``(start, stop)`` slice of
    ``data`` for length-delimited fields, raw bytes for fixed-width ones."""
    while pos < end:
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise MalformedDat(f"field number 0 at byte {pos}")
        if wire == WIRE_VARINT:
            value, pos = _varint(data, pos, end)
            yield field, wire, value
        elif wire == WIRE_LEN:
            size, pos = _varint(data, pos, end)
            if size > end - pos:
                raise MalformedDat(f"length {size} at byte {pos} runs past the end")
            yield field, wire, (pos, pos + size)
            pos += size
        elif wire in (WIRE_FIXED64, WIRE_FIXED32):
            size = 8 if wire == WIRE_FIXED64 else 4
            if size > end - pos:
                raise MalformedDat(f"fixed field at byte {pos} runs past the end")
            yield field, wire, data[pos:pos + size]
            pos += size
        else:
            raise MalformedDat(f"unsupported wire type {wire} at byte {pos}")


def _text(data: bytes, span: object) -> str:
    start, stop = cast(Tuple[int, int], span)
    try:
        return data[start:stop].decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedDat(f"invalid UTF-8 string at byte {start}") from e


def index_entries(data: bytes) -> Dict[str, Tuple[int, int]]:
    """Map each entry's country code (case-folded) to its byte span; the first one wins,
    as ``loadIP``/``loadSite`` return the first ``EqualFold`` match."""
    index: Dict[str, Tuple[int, int]] = {}
    for field, wire, value in iter_fields(data, 0, len(data)):
        if field != FIELD_ENTRY or wire != WIRE_LEN:
            continue
        start, stop = cast(Tuple[int, int], value)
        index.setdefault(_entry_code(data, start, stop).casefold(), (start, stop))
    return index


def _entry_code(data: bytes, start: int, stop: int) -> str:
    code = ""
    for field, wire, value in iter_fields(data, start, stop):
        if field == FIELD_CODE and wire == WIRE_LEN:
            code = _text(data, value)  # proto3: a repeated scalar's last value wins
        if field == FIELD_CODE:
            # Encoders write fields in number order, so the code comes first and the (long)
            # list of items after it is not walked at all.
            break
    return code


def _decode_items(data: bytes, start: int, stop: int,
                  decode_one: Callable[[bytes, int, int], T]) -> List[T]:
    """The repeated message field (GeoIP.cidr, GeoSite.domain) of one entry."""
    items: List[T] = []
    for field, wire, value in iter_fields(data, start, stop):
        if field == FIELD_ITEMS and wire == WIRE_LEN:
            items.append(decode_one(data, *value))  # type: ignore[misc]
    return items


def decode_cidrs(data: bytes, start: int, stop: int) -> List[Cidr]:
    return _decode_items(data, start, stop, _decode_cidr)


def _decode_cidr(data: bytes, start: int, stop: int) -> Cidr:
    raw, prefix = b"", 0
    for field, wire, value in iter_fields(data, start, stop):
        if field == FIELD_CIDR_IP and wire == WIRE_LEN:
            raw = data[value[0]:value[1]]  # type: ignore[index]
        elif field == FIELD_CIDR_PREFIX and wire == WIRE_VARINT:
            prefix = value  # type: ignore[assignment]
    if len(raw) not in (IPV4_BYTES, IPV6_BYTES):  # GeoIPMatcher.Init: "unexpect ip length"
        raise MalformedDat(f"CIDR at byte {start} has an IP of {len(raw)} bytes")
    if prefix > (IPV4_BITS if len(raw) == IPV4_BYTES else IPV6_BITS):
        raise MalformedDat(f"CIDR at byte {start} has prefix {prefix}")
    return Cidr.from_packed(raw, prefix)


def decode_site_domains(data: bytes, start: int, stop: int) -> List[SiteDomain]:
    return _decode_items(data, start, stop, _decode_site_domain)


def _decode_site_domain(data: bytes, start: int, stop: int) -> SiteDomain:
    kind, text, attributes = 0, "", []
    for field, wire, value in iter_fields(data, start, stop):
        if field == FIELD_DOMAIN_TYPE and wire == WIRE_VARINT:
            kind = value  # type: ignore[assignment]
        elif field == FIELD_DOMAIN_VALUE and wire == WIRE_LEN:
            text = _text(data, value)
        elif field == FIELD_DOMAIN_ATTRIBUTE and wire == WIRE_LEN:
            attributes.append(_decode_attribute_key(data, *value))  # type: ignore[misc]
    try:
        domain_kind = DomainKind(kind)
    except ValueError:  # condition.go domainToMatcher: "unsupported domain type"
        raise MalformedDat(f"domain at byte {start} has unknown type {kind}") from None
    return SiteDomain(domain_kind, text, tuple(attributes))


def _decode_attribute_key(data: bytes, start: int, stop: int) -> str:
    key = ""
    for field, wire, value in iter_fields(data, start, stop):
        if field == FIELD_ATTR_KEY and wire == WIRE_LEN:
            key = _text(data, value)
    return key


# --------------------------------------------------------------------------- loading

def asset_dir(environ: Optional[Mapping[str, str]] = None) -> str:
    """The asset directory: the first variable of ASSET_ENV_NAMES that is set, else the
    directory of the running interpreter (v2ray: its executable's directory)."""
    env = os.environ if environ is None else environ
    for name in ASSET_ENV_NAMES:
        if name in env:
            return env[name]
    return os.path.dirname(os.path.abspath(sys.executable))


def default_search_dirs(environ: Optional[Mapping[str, str]] = None) -> Tuple[str, ...]:
    dirs: List[str] = []
    for directory in (asset_dir(environ), *SHARED_ASSET_DIRS):
        if directory not in dirs:
            dirs.append(directory)
    return tuple(dirs)


def _join_asset(directory: str, filename: str) -> str:
    # Go's filepath.Join keeps an absolute second part inside the first (Join("/a", "/b") is
    # "/a/b"), unlike os.path.join: do the same, so ext:/x.dat stays in the asset directory.
    return os.path.normpath(os.path.join(directory, filename.lstrip("/")))


class GeoData:
    """Reads .dat files for one config build; each file is read and indexed at most once.

    Errors are ConfigErrors located at ``path`` (the rule entry that named the list) and
    saying which file or list is missing and which directories were searched.
    """

    def __init__(self, search_dirs: Optional[Sequence[str]] = None):
        self.search_dirs = tuple(search_dirs) if search_dirs is not None else default_search_dirs()
        self._files: Dict[str, Tuple[str, bytes, Dict[str, Tuple[int, int]]]] = {}
        self._cidrs: Dict[Tuple[str, str], List[Cidr]] = {}
        self._sites: Dict[Tuple[str, str], List[SiteDomain]] = {}

    def locate(self, filename: str) -> Optional[str]:
        for directory in self.search_dirs:
            candidate = _join_asset(directory, filename)
            if os.path.isfile(candidate):
                return candidate
        return None

    def geoip(self, filename: str, code: str, path: str = "") -> List[Cidr]:
        """The CIDRs of list ``code`` (case-insensitive) in ``filename``."""
        key = (filename, code.casefold())
        if key not in self._cidrs:
            data, span, where = self._entry(filename, code, "country", path)
            self._cidrs[key] = self._decode(decode_cidrs, data, span, where, path)
        return self._cidrs[key]

    def geosite(self, filename: str, code: str, path: str = "") -> List[SiteDomain]:
        """The domains of list ``code`` (case-insensitive) in ``filename``."""
        key = (filename, code.casefold())
        if key not in self._sites:
            data, span, where = self._entry(filename, code, "list", path)
            self._sites[key] = self._decode(decode_site_domains, data, span, where, path)
        return self._sites[key]

    def private_cidrs(self, path: str = "") -> List[Cidr]:
        """``geoip:private``: geoip.dat's list when the file exists and has one, else built in."""
        if self.locate(GEOIP_FILE) is not None:
            if self._has_list(GEOIP_FILE, PRIVATE_LIST, path):
                return self.geoip(GEOIP_FILE, PRIVATE_LIST, path)
            log.info("%s has no %r list; using the built-in one", self.locate(GEOIP_FILE), PRIVATE_LIST)
        return [parse_cidr(text) for text in PRIVATE_CIDRS]

    def _has_list(self, filename: str, code: str, path: str) -> bool:
        return code.casefold() in self._load(filename, path)[2]

    def _entry(self, filename: str, code: str, noun: str,
               path: str) -> Tuple[bytes, Tuple[int, int], str]:
        where, data, index = self._load(filename, path)
        span = index.get(code.casefold())
        if span is None:
            raise ConfigError(f"{noun} {code!r} not found in {where}", path,
                              expected=f"{len(index)} lists in that file")
        return data, span, where

    def _load(self, filename: str, path: str) -> Tuple[str, bytes, Dict[str, Tuple[int, int]]]:
        if filename not in self._files:
            where = self.locate(filename)
            if where is None:
                raise ConfigError(
                    f"failed to open file: {filename}: not found in "
                    f"{', '.join(self.search_dirs)}", path,
                    expected="set V2RAY_LOCATION_ASSET (or V2SYNC_LOCATION_ASSET) to its directory")
            try:
                with open(where, "rb") as handle:
                    data = handle.read()
            except OSError as e:
                raise ConfigError(f"failed to read {where}: {e.strerror}", path) from e
            index = self._decode(index_entries, data, (0, len(data)), where, path, whole=True)
            self._files[filename] = (where, data, index)
        return self._files[filename]

    @staticmethod
    def _decode(decoder: Callable[..., T], data: bytes, span: Tuple[int, int], where: str,
                path: str, whole: bool = False) -> T:
        try:
            return decoder(data) if whole else decoder(data, *span)
        except MalformedDat as e:
            raise ConfigError(f"{where} is not a valid V2Ray .dat file: {e}", path) from e


# --------------------------------------------------------------------------- writing (tests, tools)

def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_len(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | WIRE_LEN) + _encode_varint(len(payload)) + payload


def _field_varint(field: int, value: int) -> bytes:
    return _encode_varint(field << 3 | WIRE_VARINT) + _encode_varint(value)


def encode_cidr(cidr: Cidr) -> bytes:
    size = IPV4_BYTES if cidr.version == 4 else IPV6_BYTES
    return (_field_len(FIELD_CIDR_IP, cidr.value.to_bytes(size, "big"))
            + _field_varint(FIELD_CIDR_PREFIX, cidr.prefix))


def encode_geoip_list(entries: Iterable[Tuple[str, Sequence[str]]]) -> bytes:
    """A ``GeoIPList`` from ``(country_code, ["10.0.0.0/8", "2001:db8::/32", ...])`` pairs."""
    out = bytearray()
    for code, cidrs in entries:
        body = _field_len(FIELD_CODE, code.encode("utf-8"))
        body += b"".join(_field_len(FIELD_ITEMS, encode_cidr(parse_cidr(text))) for text in cidrs)
        out += _field_len(FIELD_ENTRY, body)
    return bytes(out)


def encode_site_domain(domain: SiteDomain) -> bytes:
    body = _field_varint(FIELD_DOMAIN_TYPE, int(domain.kind)) if domain.kind else b""  # proto3 omits 0
    body += _field_len(FIELD_DOMAIN_VALUE, domain.value.encode("utf-8"))
    for key in domain.attributes:
        attribute = _field_len(FIELD_ATTR_KEY, key.encode("utf-8")) + _field_varint(FIELD_ATTR_BOOL, 1)
        body += _field_len(FIELD_DOMAIN_ATTRIBUTE, attribute)
    return body


def encode_geosite_list(entries: Iterable[Tuple[str, Sequence[SiteDomain]]]) -> bytes:
    """A ``GeoSiteList`` from ``(list_name, [SiteDomain, ...])`` pairs."""
    out = bytearray()
    for code, domains in entries:
        body = _field_len(FIELD_CODE, code.encode("utf-8"))
        body += b"".join(_field_len(FIELD_ITEMS, encode_site_domain(d)) for d in domains)
        out += _field_len(FIELD_ENTRY, body)
    return bytes(out)
