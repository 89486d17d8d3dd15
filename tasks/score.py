"""Prefect tasks of the score stage: one cached task per shard of videos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from tasks.caching import stage_task
from tasks.llm import judge_api_key
from vpo_core.config import LLMConfig, ScoreConfig
from vpo_core.reward.checklist import read_answers_file
from vpo_core.reward.scoring import score_rows
from vpo_core.tables import DataRef, concat_tables, read_table, write_table


@stage_task(name="score-shard")
def shard(videos: DataRef, lo: int, hi: int, cfg: ScoreConfig, judge: LLMConfig,
          answers: DataRef | None, out_dir: str) -> dict[str, Any]:
    """Score videos[lo:hi]; ``answers`` is the configured answers file, by content."""
    rows = read_table(videos, "videos").slice(lo, hi - lo)
    answers = read_answers_file(answers.path) if answers else None
    key = judge_api_key(judge) if cfg.backend == "vlm-checklist" else None
    df = score_rows(rows, cfg, judge, key, answers=answers, work_dir=out_dir)
    return {"rewards": write_table(df, Path(out_dir) / f"rewards-{lo:07d}.parquet", "rewards")}


@stage_task(name="score-merge")
def merge(shards: list[DataRef], out_dir: str) -> dict[str, Any]:
    df = concat_tables(shards, "rewards")
    vc = df.get_column("status").value_counts()
    ok = df.filter(pl.col("status") == "ok")["score"]
    return {"rewards": write_table(df, Path(out_dir) / "rewards.parquet", "rewards"),
            "stats": {"videos": df.height,
                      "status": dict(zip(vc["status"], vc["count"], strict=True)),
                      "score_mean": round(float(ok.mean()), 4) if len(ok) else None,
                      "score_min": round(float(ok.min()), 4) if len(ok) else None,
                      "score_max": round(float(ok.max()), 4) if len(ok) else None}}
