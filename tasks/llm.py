"""API keys for the judge, resolved inside task bodies: never a task parameter, so never
in the UI, the logs or a cache key."""

from __future__ import annotations

import os

from vpo_core.config import LLMConfig
from vpo_core.errors import ConfigError


def judge_api_key(cfg: LLMConfig) -> str | None:
    """The key from the Prefect Secret block or the environment variable the config names."""
    if cfg.api_key_secret:
        from prefect.blocks.system import Secret

        return Secret.load(cfg.api_key_secret).get()
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise ConfigError(f"judge.api_key_env: the environment variable "
                              f"{cfg.api_key_env} is not set")
        return key
    return None
