"""Where the CLI's links come from: the command line and ``--subscription FILE|-``."""
from __future__ import annotations

import sys
from typing import IO, List, Optional, Sequence

from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.infra.share.links import MAX_SUBSCRIPTION_BYTES, parse_link, parse_subscription
from v2sync.infra.share.model import ShareLink

STDIN_NAMES = ("-", "stdin:")


def read_links(texts: Sequence[str], subscription: Optional[str],
               stdin: Optional[IO[bytes]] = None,
               skipped: Optional[List[ConfigError]] = None) -> List[ShareLink]:
    """Every link given; ConfigErrors with all the bad ones, each naming its place. A
    subscription's unusable lines go to ``skipped`` while it has usable ones (see
    ``parse_subscription``); links on the command line must all be good."""
    links: List[ShareLink] = []
    errors: List[ConfigError] = []
    for i, text in enumerate(texts):
        try:
            links.append(parse_link(text, f"links[{i}]"))
        except ConfigError as e:
            errors.append(e)
    if subscription is not None:
        try:
            links += parse_subscription(_read(subscription, stdin), f"{subscription}", skipped)
        except ConfigErrors as e:
            errors += e.errors
        except ConfigError as e:
            errors.append(e)
    if errors:
        raise ConfigErrors(errors)
    if not links:
        raise ConfigError("no link given", expected="LINK... or --subscription FILE|-")
    return links


def _read(name: str, stdin: Optional[IO[bytes]]) -> bytes:
    limit = MAX_SUBSCRIPTION_BYTES + 1  # one byte more tells "too large" from "just fits"
    if name in STDIN_NAMES:
        return (stdin or sys.stdin.buffer).read(limit)
    try:
        with open(name, "rb") as f:
            return f.read(limit)
    except OSError as e:
        raise ConfigError(f"cannot be read: {e.strerror or e}", name) from None


def ignored_fields(links: Sequence[ShareLink]) -> List[str]:
    """One line per link that carried fields v2sync read but does not honour."""
    return [f"link {i} ({link.name or link.address}): ignored: {', '.join(link.ignored)}"
            for i, link in enumerate(links, 1) if link.ignored]
