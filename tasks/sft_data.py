"""Prefect tasks of the sft-data stage: one cached task per shard, then a merge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from tasks.caching import stage_task
from tasks.llm import judge_api_key
from vpo_core.config import ChecksConfig, LLMConfig, SftDataConfig
from vpo_core.sft_data import stage
from vpo_core.tables import DataRef
from vpo_core.workdir import current

MODULES = ("vpo_core.sft_data", "vpo_core.checks", "vpo_core.shards", "vpo_core.llm",
           "vpo_core.prompts", "vpo_core.models")


@task(name="sft-data-plan")
def plan(queries: DataRef, shard_size: int) -> list[list[dict[str, Any]]]:
    """The SFT split cut into shards (read from the queries table)."""
    return stage.shard_queries(queries, shard_size)


@stage_task(name="sft-data-shard", modules=MODULES,
            data=("demonstrations.json", "paper_figure7_few_shot_template.txt"))
def shard(rows: list[dict[str, Any]], index: int, judge: LLMConfig, cfg: SftDataConfig,
          checks: ChecksConfig, out_dir: str) -> dict[str, Any]:
    work = current()  # the model cache and the call store; never part of a cache key
    return stage.run_shard(rows, index, judge, cfg, Path(out_dir), judge_api_key(judge),
                           str(work.models), work.root, checks)


@stage_task(name="sft-data-merge", modules=MODULES)
def merge(shards: list[DataRef], out_dir: str) -> dict[str, Any]:
    return stage.merge(shards, Path(out_dir))
