"""One entry point per direction: ``parse_link`` (any supported scheme) and ``format_link``,
and subscriptions (``parse_subscription``): base64 of newline-separated links, or the links
as plain lines, as providers serve them (v2rayN reads both)."""
from __future__ import annotations

from typing import List, Optional, Tuple

from v2sync.common.errors import ConfigError, ConfigErrors
from v2sync.infra.share import base64text, shadowsocks, url, vmess_json
from v2sync.infra.share.model import MAX_LINK_CHARS, SHADOWSOCKS, VMESS, ShareLink

SCHEMES = ("vmess", "vless", "trojan", "ss")
# A subscription is a few KiB to a few hundred KiB; these bound a hostile or broken one.
MAX_SUBSCRIPTION_BYTES = 4 * 1024 * 1024
MAX_SUBSCRIPTION_LINKS = 10_000


def parse_link(text: str, part: str = "link") -> ShareLink:
    """A ShareLink from one link; ConfigError located at ``part`` (``links[2].port``)."""
    try:
        return _parse(text.strip())
    except ConfigError as e:
        raise e.located(prefix=part) from None


def _parse(text: str) -> ShareLink:
    if len(text) > MAX_LINK_CHARS:
        raise ConfigError(f"is {len(text)} characters long",
                          expected=f"a link of at most {MAX_LINK_CHARS}")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        shown = scheme[:20] + "://" if sep else text[:20]
        raise ConfigError(f"{shown!r} is not a share link",
                          expected="vmess://, vless://, trojan:// or ss://")
    if scheme == "ss":
        return shadowsocks.parse(text)
    if scheme == "vmess" and "@" not in rest.split("#")[0]:
        return vmess_json.parse(text)  # v2rayN's base64 JSON has no '@'; #91's URL has one
    return url.parse(text)


def format_link(link: ShareLink) -> str:
    """The link a client imports: v2rayN's JSON for VMess (every client reads it, and it
    carries alterId), SIP002 for Shadowsocks, Xray-core#91's URL for VLESS and Trojan."""
    if link.protocol == VMESS:
        return vmess_json.dump(link)
    if link.protocol == SHADOWSOCKS:
        return shadowsocks.dump(link)
    return url.dump(link)


def parse_subscription(data: bytes, part: str = "subscription",
                       skipped: Optional[List[ConfigError]] = None) -> List[ShareLink]:
    """Every link of a subscription. Given ``skipped``, a line v2sync cannot use goes there
    and the rest are kept, as v2rayN keeps what it can read (providers mix in links of
    transports v2sync lacks); without it, or when no line is usable, all the bad lines are
    raised together."""
    if len(data) > MAX_SUBSCRIPTION_BYTES:
        raise ConfigError(f"is larger than {MAX_SUBSCRIPTION_BYTES // 1024 // 1024} MiB", part)
    text = data.decode("utf-8", "replace").lstrip("\ufeff").strip()
    if base64text.looks_like(text) and "://" not in text:
        text = base64text.decode(text, part).decode("utf-8", "replace").lstrip("\ufeff")
    links, errors = _subscription_lines(text, part)
    if errors and (skipped is None or not links):
        raise ConfigErrors(errors)
    if not links:
        raise ConfigError("holds no links", part, expected="links, one a line, or their base64")
    if skipped is not None:
        skipped += errors
    return links


def _subscription_lines(text: str, part: str) -> Tuple[List[ShareLink], List[ConfigError]]:
    links: List[ShareLink] = []
    errors: List[ConfigError] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(links) + len(errors) >= MAX_SUBSCRIPTION_LINKS:
            errors.append(ConfigError(f"has more than {MAX_SUBSCRIPTION_LINKS} links", part))
            break
        try:
            links.append(parse_link(line, f"{part} line {number}"))
        except ConfigError as e:
            errors.append(e)
    return links, errors
