"""Prefect tasks of the sample stage: one cached task per shard of DPO queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.caching import stage_task
from vpo_core.config import SampleConfig
from vpo_core.sample import stage
from vpo_core.tables import DataRef


@stage_task(name="sample-shard")
def shard(rows: list[dict[str, Any]], index: int, model: DataRef, cfg: SampleConfig,
          seed: int, out_dir: str) -> dict[str, Any]:
    return stage.sample_shard(rows, model.path, cfg, seed, Path(out_dir), index)


@stage_task(name="sample-merge")
def merge(shards: list[DataRef], out_dir: str) -> dict[str, Any]:
    return stage.merge(shards, Path(out_dir))
