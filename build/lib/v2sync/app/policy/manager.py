"""Policy lookup by user level, plus the deprecated per-proxy ``timeout`` override."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from v2sync.infra.conf.model import LevelPolicy, PolicyConfig

# bufferSize < 0 means "unlimited" in v2ray; we still bound it, at a size no sane client
# exhausts on one connection, so a slow reader cannot make the process grow without limit.
UNLIMITED_BUFFER_CAP = 16 * 1024 * 1024


class PolicyManager:
    def __init__(self, config: PolicyConfig):
        self.config = config

    def for_level(self, level: int, legacy_timeout: Optional[int] = None) -> LevelPolicy:
        """The level's policy; a proxy's deprecated ``timeout`` overrides connIdle at level 0."""
        policy = self.config.for_level(level)
        if legacy_timeout and level == 0:
            policy = replace(policy, conn_idle=float(legacy_timeout))
        return policy

    @staticmethod
    def pipe_limit(policy: LevelPolicy) -> int:
        return UNLIMITED_BUFFER_CAP if policy.buffer_size < 0 else policy.buffer_size
