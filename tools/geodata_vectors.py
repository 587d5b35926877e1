#!/usr/bin/env python3
"""Write tests/vectors/geoip-test.dat and geosite-test.dat with an encoder v2sync did not write.

The encoder is Google's ``protobuf`` runtime driven by ``tests/support/routercommon_pb2.py``,
which protoc generated from v2ray 4.34's own message definitions
(``tools/routercommon/routercommon.proto``, cut from v4.34.0 ``app/router/config.proto``). So a
layout mistake in v2sync's reader (``v2sync/app/router/geodata.py``) cannot be hidden by the
same mistake in the writer of its test files, and the real ``v2ray`` reads the same files in
the differential routing tests (``tests/scenarios/test_routing_differential.py``).

    python3 tools/geodata_vectors.py            # rewrite the two .dat files
    python3 tools/geodata_vectors.py --proto    # first regenerate routercommon_pb2.py (grpcio-tools)
    python3 tools/geodata_vectors.py --check    # exit 1 if the files differ from what it would write

The content (documented in tests/vectors/GEODATA.md) uses documentation address ranges
(RFC 5737, RFC 3849), private ranges and names under ``example``.
"""
from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO_ROOT / "tools" / "routercommon"
PROTO_FILE = "routercommon.proto"
SUPPORT_DIR = REPO_ROOT / "tests" / "support"
VECTORS = REPO_ROOT / "tests" / "vectors"
GEOIP_VECTOR = VECTORS / "geoip-test.dat"
GEOSITE_VECTOR = VECTORS / "geosite-test.dat"

# (country code, [CIDR, ...])
GEOIP: Sequence[Tuple[str, Sequence[str]]] = (
    ("TEST", ("198.51.100.0/24", "2001:db8::/32")),
    ("CN", ("203.0.113.0/24", "192.0.2.128/25")),
    # Deliberately smaller than the usual private list: a file's list must win over a built-in one.
    ("PRIVATE", ("10.0.0.0/8", "127.0.0.0/8", "::1/128")),
)
# (country code, [(Domain.Type name, value, (attribute key, ...)), ...]); every attribute is
# a bool_value true, as v2fly/domain-list-community writes them.
GEOSITE: Sequence[Tuple[str, Sequence[Tuple[str, str, Tuple[str, ...]]]]] = (
    ("TEST", (
        ("Domain", "example.com", ()),
        ("Full", "www.example.org", ()),
        ("Plain", "tracker", ()),
        ("Regex", r"^ad[0-9]+\.example\.net$", ("ads",)),
        ("Domain", "ads.example.net", ("ads", "cn")),
    )),
    ("CATEGORY-ADS", (("Domain", "doubleclick.example", ("ads",)),)),
)


def generate_proto_module() -> None:
    """Run grpcio-tools' protoc on routercommon.proto into tests/support/."""
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
               f"--python_out={SUPPORT_DIR}", PROTO_FILE]
    subprocess.run(command, check=True)
    print(f"generated {SUPPORT_DIR / 'routercommon_pb2.py'} with: {' '.join(command)}", file=sys.stderr)


def _messages() -> Any:
    sys.path.insert(0, str(SUPPORT_DIR))
    import routercommon_pb2  # the generated module, not v2sync's code

    return routercommon_pb2


def geoip_bytes() -> bytes:
    pb = _messages()
    listing = pb.GeoIPList()
    for code, cidrs in GEOIP:
        entry = listing.entry.add(country_code=code)
        for text in cidrs:
            network = ipaddress.ip_network(text)
            entry.cidr.add(ip=network.network_address.packed, prefix=network.prefixlen)
    return bytes(listing.SerializeToString(deterministic=True))


def geosite_bytes() -> bytes:
    pb = _messages()
    listing = pb.GeoSiteList()
    for code, domains in GEOSITE:
        entry = listing.entry.add(country_code=code)
        for kind, value, attributes in domains:
            domain = entry.domain.add(type=pb.Domain.Type.Value(kind), value=value)
            for key in attributes:
                domain.attribute.add(key=key, bool_value=True)
    return bytes(listing.SerializeToString(deterministic=True))


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proto", action="store_true", help="regenerate routercommon_pb2.py first")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if args.proto:
        generate_proto_module()
    wanted = {GEOIP_VECTOR: geoip_bytes(), GEOSITE_VECTOR: geosite_bytes()}
    if args.check:
        stale = [str(path) for path, data in wanted.items() if path.read_bytes() != data]
        print("stale: " + ", ".join(stale) if stale else "up to date", file=sys.stderr)
        return 1 if stale else 0
    for path, data in wanted.items():
        path.write_bytes(data)
        print(f"wrote {path} ({len(data)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
