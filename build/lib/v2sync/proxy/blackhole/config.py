"""Blackhole outbound settings (v2ray ``infra/conf/blackhole.go``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from v2sync.common.errors import ConfigError, join_path
from v2sync.infra.conf.fields import get_str, require_object

RESPONSE_NONE = "none"
RESPONSE_HTTP = "http"  # answer with a 403 before closing
RESPONSE_TYPES = (RESPONSE_NONE, RESPONSE_HTTP)


@dataclass(frozen=True)
class BlackholeConfig:
    response_type: str = RESPONSE_NONE

    @classmethod
    def from_json(cls, settings: Mapping[str, Any], path: str = "") -> "BlackholeConfig":
        settings = require_object(settings, path)
        if settings.get("response") is None:
            return cls()
        where = join_path(path, "response")
        response = require_object(settings["response"], where)
        # blackhole.go loads "response" by its "type" key, which must be present.
        if "type" not in response:
            raise ConfigError("missing required key", join_path(where, "type"),
                              expected="expected one of: " + ", ".join(RESPONSE_TYPES))
        kind = get_str(response, "type", where).lower()  # LoadWithID lower-cases the id
        if kind not in RESPONSE_TYPES:
            raise ConfigError(f"unknown response type {kind!r}", join_path(where, "type"),
                              expected="expected one of: " + ", ".join(RESPONSE_TYPES))
        return cls(response_type=kind)
