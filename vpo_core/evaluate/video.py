"""Optional video-level evaluation: render each method's first-round prompts with the
configured text-to-video pipeline and score them with the configured reward, so methods
compare on the reward the preference data used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.config import LLMConfig, RenderConfig, ScoreConfig
from vpo_core.render.renderer import render_rows
from vpo_core.reward.scoring import score_rows
from vpo_core.tables import DataRef, write_table


def video_scores(judgements: pl.DataFrame, render: RenderConfig, score: ScoreConfig,
                 seed: int, out_dir: Path, judge: LLMConfig | None = None,
                 api_key: str | None = None) -> dict[str, Any]:
    """``eval_rewards`` (one row per method and query; the ``query_id`` column holds
    ``<method>/<query id>``) and the mean score of each method."""
    first = (judgements.filter(pl.col("prompt").is_not_null())
             .sort("round").group_by("method", "query_id", maintain_order=True).first())
    rows = [{"query_id": f"{r['method']}/{r['query_id']}", "query": r["query"],
             "sample_index": 0, "prompt": r["prompt"]} for r in first.to_dicts()]
    videos = render_rows(rows, render, out_dir / "videos", seed)
    rewards = score_rows(videos, score, judge, api_key, work_dir=out_dir / "score")
    ref: DataRef = write_table(rewards, out_dir / "eval_rewards.parquet", "rewards")
    means = (rewards.with_columns(method=pl.col("query_id").str.split("/").list.first())
             .group_by("method").agg(pl.col("score").mean().alias("mean"),
                                     pl.col("score").count().alias("videos"))
             .sort("method").to_dicts())
    return {"eval_rewards": ref, "video": means}
