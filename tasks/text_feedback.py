"""Prefect tasks of the text-feedback stage: one cached task per shard of samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.caching import stage_task
from tasks.llm import judge_api_key
from vpo_core.config import ChecksConfig, LLMConfig
from vpo_core.tables import DataRef
from vpo_core.text_feedback import stage
from vpo_core.workdir import current


@stage_task(name="text-feedback-shard")
def shard(samples: list[dict[str, Any]], index: int, judge: LLMConfig, checks: ChecksConfig,
          out_dir: str) -> dict[str, Any]:
    work = current()  # the model cache and the call store; never part of a cache key
    return stage.run_shard(samples, index, judge, Path(out_dir), judge_api_key(judge),
                           str(work.models), work.root, checks)


@stage_task(name="text-feedback-merge")
def merge(shards: list[dict[str, DataRef]], out_dir: str) -> dict[str, Any]:
    return stage.merge(shards, Path(out_dir))
