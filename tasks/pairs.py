"""Prefect task of the pairs stage: text and video pairs -> ``dpo_pairs``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.caching import stage_task
from vpo_core.config import ChecksConfig, PairsConfig
from vpo_core.pairs.build import build_pairs, summary, text_candidates
from vpo_core.tables import DataRef, read_table, write_table


@stage_task(name="pairs-build")
def build(critiques: DataRef, rewards: DataRef, cfg: PairsConfig, checks: ChecksConfig,
          seed: int, out_dir: str) -> dict[str, Any]:
    text = text_candidates(read_table(critiques, "critiques"))
    rewards_df = read_table(rewards, "rewards")
    pairs = build_pairs(text, rewards_df, cfg, checks, seed)
    return {"dpo_pairs": write_table(pairs, Path(out_dir) / "dpo_pairs.parquet", "dpo_pairs"),
            "stats": summary(text, rewards_df, pairs, cfg, checks)}
